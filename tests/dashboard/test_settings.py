"""The dashboard's settings, resolved once (dashboards.settings): argument >
environment > [dashboard] > default, validated there; the CLI and library
users of make_server resolve the same way.  Pure, but for one real server."""

import os

import pytest

from dashboards import DashboardError
from dashboards import settings as ds
from dashboards.cli import _settings, dashboard


@pytest.fixture
def env(tmp_path):
    cfg = tmp_path / "h.toml"
    cfg.write_text("")
    return {"HOOKSCOPE_CONFIG": str(cfg)}


def _write(env, text):
    with open(env["HOOKSCOPE_CONFIG"], "w") as f:
        f.write(text)


TOK = ["a" * 16, "b" * 16, "c" * 16]


def test_defaults(env):
    s = ds.resolve_dashboard(db="/x.duckdb", env=env)
    assert (s.db, s.archive, s.host, s.port, s.token, s.no_auth) == ("/x.duckdb", None, "127.0.0.1",
                                                                     ds.DEFAULT_PORT, None, False)
    assert s.config_file == env["HOOKSCOPE_CONFIG"]


def test_argument_then_environment_then_file_then_default(env):
    _write(env, f'[dashboard]\ndb = "/file.duckdb"\nhost = "10.0.0.1"\nport = 9000\ntoken = "{TOK[2]}"\n')
    s = ds.resolve_dashboard(env=env)
    assert (s.db, s.host, s.port, s.token) == ("/file.duckdb", "10.0.0.1", 9000, TOK[2])
    env.update(HOOKSCOPE_DB="/env.duckdb", HOOKSCOPE_DASHBOARD_TOKEN=TOK[1])
    s = ds.resolve_dashboard(env=env)
    assert (s.db, s.token) == ("/env.duckdb", TOK[1])
    s = ds.resolve_dashboard({"db": "/arg.duckdb", "token": TOK[0], "host": "::1", "port": 0}, env=env)
    assert (s.db, s.host, s.port, s.token) == ("/arg.duckdb", "::1", 0, TOK[0])
    assert TOK[0] not in repr(s)


def test_the_store_is_one_choice(env):
    """The first level naming a store gives it: an environment variable never
    silently wins over an explicit option (as ``--db X`` with $HOOKSCOPE_ARCHIVE set)."""
    env.update(HOOKSCOPE_ARCHIVE="/env-archive")
    assert (ds.resolve_dashboard(db="/a.duckdb", env=env).db,
            ds.resolve_dashboard(db="/a.duckdb", env=env).archive) == ("/a.duckdb", None)
    env.update(HOOKSCOPE_DB="/env.duckdb")
    s = ds.resolve_dashboard(archive="/arg-archive", env=env)
    assert (s.db, s.archive) == (None, "/arg-archive")
    s = ds.resolve_dashboard(env=env)  # both in the environment: the DuckDB file
    assert (s.db, s.archive) == ("/env.duckdb", None)
    s = ds.resolve_dashboard(db="/a.duckdb", archive="/b", env=env)  # hookscope serve gives both
    assert (s.db, s.archive) == ("/a.duckdb", "/b")
    assert ds.resolve_store({}, env=env) == ("/env.duckdb", None)


@pytest.mark.parametrize("args,env_extra,config,error,says", [
    ({}, {}, "", ds.NoStore, r"--db FILE or --archive DIR"),
    ({"db": "/x", "host": "0.0.0.0"}, {}, "", ds.AuthConfigError, r"without a token.*--token"),
    ({"db": "/x"}, {}, '[dashboard]\nhost = "0.0.0.0"\n', ds.AuthConfigError, r"without a token"),
    ({"db": "/x", "token": "short"}, {}, "", ds.AuthConfigError, "16 to 256"),
    ({"db": "/x"}, {"HOOKSCOPE_DASHBOARD_TOKEN": "short"}, "", ds.AuthConfigError, "16 to 256"),
    ({"db": "/x"}, {}, "[dashboard]\nport = 70000\n", DashboardError,
     r"h\.toml: \[dashboard\] port = 70000: 70000 is not in the range"),
    ({"db": "/x"}, {}, '[dashboard]\nport = "http"\n', DashboardError, r"\[dashboard\] port = 'http'"),
    ({"db": "/x"}, {}, "[dashboard]\nhots = 1\n", DashboardError, r"h\.toml: unknown key\(s\) in \[dashboard\]: hots"),
    ({"db": "/x"}, {}, "[dashboard]\nno_auth = 3\n", DashboardError, r"no_auth = 3: must be true or false"),
    ({"db": "/x", "port": "x"}, {}, "", DashboardError, r"--port 'x'"),
])
def test_bad_values_name_where_they_came_from(env, args, env_extra, config, error, says):
    _write(env, config)
    env.update(env_extra)
    with pytest.raises(error, match=says):
        ds.resolve_dashboard(args, env=env)


def test_no_auth_from_the_config_file(env):
    _write(env, '[dashboard]\nhost = "0.0.0.0"\nno_auth = true\n')
    assert ds.resolve_dashboard(db="/x", env=env).no_auth is True


def test_the_cli_resolves_as_the_library(env, monkeypatch):
    for k in list(os.environ):
        if k.startswith("HOOKSCOPE_"):
            monkeypatch.delenv(k)
    _write(env, f'[dashboard]\nport = 9001\ntoken = "{TOK[2]}"\n')
    env.update(HOOKSCOPE_ARCHIVE="/env-archive", HOOKSCOPE_DASHBOARD_TOKEN=TOK[1])
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for argv, args in (([], {}), (["--db", "/a.duckdb", "--port", "0"], {"db": "/a.duckdb", "port": 0}),
                       (["--token", TOK[0], "--host", "::1"], {"token": TOK[0], "host": "::1"})):
        ctx = dashboard.make_context("dashboard", list(argv))
        assert _settings(ctx) == ds.resolve_dashboard(args, env=env)


def test_make_server_resolves_for_library_users(store_db, monkeypatch, tmp_path):
    """No store argument: $HOOKSCOPE_DB, as for ``hookscope dashboard``."""
    from dashboards.server import make_server

    monkeypatch.setenv("HOOKSCOPE_CONFIG", str(tmp_path / "none.toml"))
    (tmp_path / "none.toml").write_text("")
    monkeypatch.delenv("HOOKSCOPE_ARCHIVE", raising=False)
    monkeypatch.delenv("HOOKSCOPE_DASHBOARD_TOKEN", raising=False)
    monkeypatch.setenv("HOOKSCOPE_DB", store_db)
    srv = make_server(port=0)
    try:
        assert srv.store.db == store_db and srv.token is None
    finally:
        srv.server_close()

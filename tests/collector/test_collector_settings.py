"""The collector's settings, resolved once by the library
(collector.config.resolve_settings): argument > environment > [collector] >
default, validated there; the CLI resolves exactly as a library user does.
Pure: no server, no store."""

from __future__ import annotations

import dataclasses
import os

import pytest

from collector import config as cc
from collector.cli import _settings, collect
from collector.errors import CollectorError


@pytest.fixture
def env(tmp_path):
    """A clean environment and an empty config file."""
    cfg = tmp_path / "h.toml"
    cfg.write_text("")
    return {"HOOKSCOPE_CONFIG": str(cfg)}


def _write(env, text):
    with open(env["HOOKSCOPE_CONFIG"], "w") as f:
        f.write(text)


def test_defaults(env):
    s = cc.resolve_settings(env=env)
    assert (s.db, s.archive, s.nats, s.batch, s.replicas, s.nats_port, s.memory_limit) == (
        cc.DEFAULT_DB, os.path.join(os.path.dirname(cc.DEFAULT_DB), "archive"), None, 2048, 1, 4222,
        cc.DEFAULT_MEMORY_LIMIT)
    assert s.config_file == env["HOOKSCOPE_CONFIG"] and s.auth.user is None


@pytest.mark.parametrize("key,env_name,values", [
    ("db", "HOOKSCOPE_DB", ("/arg/h.duckdb", "/env/h.duckdb", "/file/h.duckdb")),
    ("nats", "HOOKSCOPE_NATS_URL", ("nats://arg:1", "nats://env:2", "nats://file:3")),
    ("memory_limit", "HOOKSCOPE_COLLECTOR_MEMORY_LIMIT", ("1GB", "2GB", "3GB")),
    ("name", "HOOKSCOPE_COLLECTOR_NAME", ("arg", "env", "file")),
    ("batch", None, (7, None, 9)),
])
def test_argument_then_environment_then_file_then_default(env, key, env_name, values):
    arg, from_env, from_file = values
    _write(env, f"[collector]\n{key} = {from_file!r}\n".replace("'", '"'))
    if env_name:
        env[env_name] = from_env
        assert cc.resolve_settings(env=env)[key] == from_env
        del env[env_name]
    assert cc.resolve_settings(env=env)[key] == from_file
    if env_name:
        env[env_name] = from_env
    assert cc.resolve_settings({key: arg}, env=env)[key] == arg
    _write(env, "")
    if env_name:
        del env[env_name]
    assert cc.resolve_settings(env=env)[key] == dict(db=cc.DEFAULT_DB, nats=None, name=None, batch=2048,
                                                     memory_limit=cc.DEFAULT_MEMORY_LIMIT)[key]


def test_credentials_follow_the_same_order(env):
    _write(env, '[collector]\nuser = "file-user"\npassword = "file-pw"\nnkey = "/file.nk"\n')
    s = cc.resolve_settings(env=env)
    assert (s.auth.user, s.auth.password, s.auth.nkey) == ("file-user", "file-pw", "/file.nk")
    env.update(HOOKSCOPE_NATS_USER="env-user", HOOKSCOPE_NATS_PASSWORD="env-pw", HOOKSCOPE_NATS_NKEY="/env.nk")
    s = cc.resolve_settings(env=env)
    assert (s.auth.user, s.auth.password, s.auth.nkey) == ("env-user", "env-pw", "/env.nk")
    s = cc.resolve_settings({"user": "arg-user", "nkey": "/arg.nk"}, env=env)
    assert (s.auth.user, s.auth.password, s.auth.nkey) == ("arg-user", "env-pw", "/arg.nk")
    assert "env-pw" not in repr(s)


def test_a_password_without_a_user_and_a_token_are_not_collector_logins(env):
    env.update(HOOKSCOPE_NATS_PASSWORD="agent-pw", HOOKSCOPE_NATS_TOKEN="agent-token")
    s = cc.resolve_settings(env=env)
    assert s.auth.password is None and s.auth.token is None


def test_archive_follows_the_db_and_paths_are_absolute(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = cc.resolve_settings({"db": "rel/h.duckdb"}, env=env)
    assert s.db == str(tmp_path / "rel/h.duckdb") and s.archive == str(tmp_path / "rel/archive")
    assert cc.resolve_settings({"archive": "a"}, env=env).archive == str(tmp_path / "a")


@pytest.mark.parametrize("args,env_extra,config,says", [
    ({}, {}, '[collector]\nbatch = "lots"\n', r"h\.toml: \[collector\] batch = 'lots': 'lots' is not an integer"),
    ({}, {}, "[collector]\nbatch = 0\n", r"h\.toml: \[collector\] batch = 0: 0 is not in the range 1<=x<=10000"),
    ({}, {}, "[collector]\nreplicas = 9\n", r"\[collector\] replicas = 9"),
    ({}, {}, '[collector]\nbach = 1\n', r"h\.toml: unknown key\(s\) in \[collector\]: bach \(known: "),
    ({}, {}, "[collector]\nnkey = 3\n", r"\[collector\] nkey = 3: must be a string"),
    ({}, {}, "collector = 3\n", r"h\.toml: \[collector\] must be a table"),
    ({}, {"HOOKSCOPE_COLLECTOR_MEMORY_LIMIT": "lots"}, "", r"memory limit 'lots' is not a size"),
    ({"batch": "x"}, {}, "", r"--batch 'x': 'x' is not an integer"),
    ({"nats": "nats://a:1", "nats_port": 5000}, {}, "", r"--nats-port is the embedded nats-server's port"),
])
def test_bad_values_name_where_they_came_from(env, args, env_extra, config, says):
    _write(env, config)
    env.update(env_extra)
    with pytest.raises(CollectorError, match=says):
        cc.resolve_settings(args, env=env)


def test_a_port_from_the_config_file_does_not_conflict(env):
    _write(env, "[collector]\nnats_port = 5000\n")
    assert cc.resolve_settings({"nats": "nats://a:1"}, env=env).nats_port == 5000
    with pytest.raises(cc.SettingsConflict):
        cc.resolve_settings({"nats": "nats://a:1", "nats_port": 5000}, env=env)


def test_unknown_argument_is_a_type_error(env):
    with pytest.raises(TypeError, match="bach"):
        cc.resolve_settings({"bach": 1}, env=env)


def test_the_cli_resolves_as_the_library(env, monkeypatch):
    """Whatever reaches ``hookscope collect`` (options, their envvars, the
    config file), its settings are those a library user gets for the same
    arguments and environment."""
    for k in list(os.environ):
        if k.startswith("HOOKSCOPE_"):
            monkeypatch.delenv(k)
    _write(env, '[collector]\nbatch = 7\nname = "file"\nuser = "u"\npassword = "pw"\nmemory_limit = "1GB"\n')
    env.update(HOOKSCOPE_DB="/env/h.duckdb", HOOKSCOPE_COLLECTOR_NAME="env")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for argv, args in (([], {}), (["--batch", "9", "--nats", "nats://a:1"], {"batch": 9, "nats": "nats://a:1"}),
                       (["--memory-limit", "none", "--db", "/arg/h.duckdb"],
                        {"memory_limit": "none", "db": "/arg/h.duckdb"})):
        ctx = collect.make_context("collect", list(argv))
        assert _settings(ctx, ctx.params) == cc.resolve_settings(args, env=env)


def test_settings_build_the_runtime_config(env, tmp_path):
    seed = tmp_path / "c.nk"
    seed.write_text("SUAxxx\n")
    s = cc.resolve_settings({"db": str(tmp_path / "h.duckdb"), "nkey": str(seed), "name": "c1", "batch": 10},
                            env=env)
    cfg = s.collector_config("nats://127.0.0.1:4222", fsync=False)
    assert (cfg.db, cfg.archive, cfg.instance, cfg.batch, cfg.nkey, cfg.fsync) == (
        s.db, s.archive, "c1", 10, str(seed), False)
    assert cfg.nats_options().nkey_seed == str(seed)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.batch = 3
    with pytest.raises(CollectorError, match="no NATS server"):
        s.collector_config()
    missing = cc.resolve_settings({"nkey": str(tmp_path / "nope.nk")}, env=env)  # resolving opens no file
    with pytest.raises(CollectorError, match=r"nope\.nk .*--nkey"):
        missing.collector_config("nats://127.0.0.1:4222")

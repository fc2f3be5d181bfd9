"""One CLI dialect across ``hookscope``: walks the whole command tree.

Every command and group answers ``-h`` through the real dispatcher
(emitter.cli.main), prints exactly one example, and every environment
variable an option reads is declared with click's ``envvar=`` and shown in
its help; config files reach options through click's ``default_map``.
"""

import re

import click
import pytest
from click.testing import CliRunner

from emitter import cli

#: mentioned in help on purpose, never an option (a password would show in ps)
NOT_OPTIONS = {"HOOKSCOPE_NATS_PASSWORD"}
ARGPARSE = ("run", "plan", "exec", "run-parts")


def _walk(cmd, path=()):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            yield from _walk(sub, (*path, name))


def _tree():
    out = []
    for name, (target, _) in cli.COMMANDS.items():
        if name in ARGPARSE:
            continue
        for path, cmd in _walk(cli._load(target)):
            out.append(((name, *path), cmd))
    return out


TREE = _tree()


def _help(capsys, argv):
    try:
        rc = cli.main([*argv, "-h"])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc or 0, out.out + out.err


def _examples(text):
    return len(re.findall(r"^\s*Example\b", text, re.M))


def test_tree_is_complete():
    names = {p for p, _ in TREE}
    for p in (("audit", "verify"), ("report", "job"), ("report", "node"), ("collect",), ("doctor",)):
        assert p in names


@pytest.mark.parametrize("argv", [p for p, _ in TREE] + [(a,) for a in ARGPARSE], ids=" ".join)
def test_dash_h_and_one_example(capsys, argv):
    rc, text = _help(capsys, argv)
    assert rc == 0, text
    assert "usage:" in text.lower()
    assert _examples(text) == 1, f"{' '.join(argv)} -h prints {_examples(text)} examples:\n{text}"


@pytest.mark.parametrize("argv,cmd", TREE, ids=[" ".join(p) for p, _ in TREE])
def test_env_vars_are_declared_and_shown(capsys, argv, cmd):
    _, text = _help(capsys, argv)
    flat = " ".join(text.split())
    for p in cmd.params:
        if not isinstance(p, click.Option):
            continue
        envs = [p.envvar] if isinstance(p.envvar, str) else list(p.envvar or [])
        if envs:
            assert p.show_envvar, f"{argv} {p.opts[0]}: envvar not shown in help"
            for e in envs:
                assert e in flat, f"{argv} {p.opts[0]}: {e} missing from help"
        # a variable named in help is one click reads: no hand resolution
        for e in re.findall(r"HOOKSCOPE_[A-Z_]+", p.help or ""):
            assert e in envs or e in NOT_OPTIONS, f"{argv} {p.opts[0]}: help names {e} but click does not read it"


def test_settings_env_vars_are_click_envvars():
    from emitter.agent import AgentSettings

    agent = cli._load(cli.COMMANDS["agent"][0])
    declared = {e for p in agent.params for e in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])}
    assert set(AgentSettings.ENV.values()) - {"HOOKSCOPE_NATS_PASSWORD", "HOOKSCOPE_NATS_TOKEN"} <= declared
    assert {"HOOKSCOPE_JOURNAL_DIR", "HOOKSCOPE_CONFIG"} <= declared


def test_journal_is_one_name_and_the_old_one_still_works(monkeypatch):
    from emitter.agentcli import agent

    monkeypatch.delenv("HOOKSCOPE_JOURNAL_DIR", raising=False)
    monkeypatch.setenv("HOOKSCOPE_JOURNAL", "/old")
    assert agent.make_context("agent", []).params["journal"] == "/old"
    monkeypatch.setenv("HOOKSCOPE_JOURNAL_DIR", "/new")
    assert agent.make_context("agent", []).params["journal"] == "/new"
    assert agent.make_context("agent", ["--journal", "/arg"]).params["journal"] == "/arg"


def test_serve_and_dashboard_share_one_port():
    from dashboards.cli import DEFAULT_PORT, dashboard
    from dashboards.serve import serve

    port = {c.name: next(p.default for p in c.params if p.name == "port") for c in (serve, dashboard)}
    assert port == {"serve": DEFAULT_PORT, "dashboard": DEFAULT_PORT}


def test_memory_limit_help_states_the_real_default(capsys):
    from collector.config import DEFAULT_MEMORY_LIMIT

    _, text = _help(capsys, ("collect",))
    flat = " ".join(text.split())
    assert "half the RAM" in flat and "at least 1 GiB" in flat and DEFAULT_MEMORY_LIMIT in flat
    assert "default 512MB" not in flat


def test_collector_config_is_the_default_map(tmp_path, monkeypatch):
    from collector.cli import collect

    for k in ("HOOKSCOPE_CONFIG", "HOOKSCOPE_NATS_URL", "HOOKSCOPE_DB"):
        monkeypatch.delenv(k, raising=False)
    cfg = tmp_path / "h.toml"
    cfg.write_text('[collector]\nbatch = 7\nnats = "nats://cfg:1"\n')
    p = collect.make_context("collect", ["--config", str(cfg)]).params
    assert (p["batch"], p["nats"]) == (7, "nats://cfg:1")
    monkeypatch.setenv("HOOKSCOPE_NATS_URL", "nats://env:2")
    p = collect.make_context("collect", ["--config", str(cfg), "--batch", "9"]).params
    assert (p["batch"], p["nats"]) == (9, "nats://env:2")  # option > env > config
    cfg.write_text('[collector]\nbatch = "lots"\n')
    r = CliRunner().invoke(collect, ["--config", str(cfg)])
    assert r.exit_code == 1 and str(cfg) in r.output and "batch" in r.output


@pytest.mark.parametrize("argv,says", [
    (("audit", "verify", "--since", "7d", "--archive", "."), "no --since/--until"),
    (("report", "job", "1", "-o", "x.html", "--since", "7d"), "No such option"),
    (("collect", "--nats", "nats://127.0.0.1:1", "--nats-port", "5000", "--once"), "--nats-port"),
    (("rebuild", "--write-archive", "--db", "x.duckdb"), "--write-archive"),
    (("agent", "--once", "--node-state-interval", "5", "--gpu", "none"), "--node-state-interval"),
    (("agent", "--once", "--gpu", "none", "--gpu-replay", __file__, "--journal", "/nonexistent-h10"),
     "add --gpu replay"),
])
def test_options_that_would_do_nothing_are_refused(capsys, argv, says):
    try:
        rc = cli.main(list(argv))
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    assert rc == 2 and says in out.out + out.err


def test_argparse_commands_document_their_environment(capsys):
    _, text = _help(capsys, ("run",))
    assert "HOOKSCOPE_JOURNAL_DIR" in text and "HOOKSCOPE_CONFIG" in text and "SLURM_SCRIPT_CONTEXT" in text

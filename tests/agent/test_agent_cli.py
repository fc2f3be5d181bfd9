"""`hookscope agent` settings: precedence and clear errors (real CLI process)."""

import subprocess

import pytest

from tests.agent.agentkit import job_env
from tests.helpers.pipeline import HOOKSCOPE

from emitter.agent import AgentConfigError, AgentSettings


def test_precedence_argument_env_config_default():
    cfg = {"agent": {"nats": "nats://cfg:1", "gpu_interval_s": 5}, "runner": {"journal_dir": "/r/j"}}
    env = {"HOOKSCOPE_NATS_URL": "nats://env:2"}
    s = AgentSettings.resolve(cfg, env=env)
    assert s.nats == "nats://env:2" and s.gpu_interval_s == 5.0 and s.journal == "/r/j"
    s = AgentSettings.resolve(cfg, env=env, nats="nats://arg:3", journal="/a")
    assert s.nats == "nats://arg:3" and s.journal == "/a"
    s = AgentSettings.resolve({}, env={})
    assert s.nats == "nats://127.0.0.1:4222" and s.gpu == "auto" and s.node
    assert s.nats_options().inbox_prefix == f"_INBOX_{s.node}"


def test_bad_settings_name_the_key():
    for cfg, text in (({"agent": {"bogus": 1}}, "agent.bogus"),
                      ({"agent": {"gpu_interval_s": "often"}}, "gpu_interval_s must be a number"),
                      ({"agent": {"gpu": "cuda"}}, "agent.gpu"),
                      ({"agent": {"nats": "host:4222"}}, "no scheme"),
                      ({"agent": {"create_streams": "maybe"}}, "true or false")):
        try:
            AgentSettings.resolve(cfg, env={})
        except AgentConfigError as exc:
            assert text in str(exc)
        else:
            raise AssertionError(f"{cfg} accepted")


def test_cli_error_names_the_config_file(tmp_path):
    p = tmp_path / "hs.toml"
    p.write_text("[agent]\nbogus = 1\n")
    r = subprocess.run(HOOKSCOPE + ["agent", "--config", str(p), "--once"], env=job_env(0),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and str(p) in r.stderr and "agent.bogus" in r.stderr


# ---------------------------------------------------------------- issue 13: one resolver
_SPOOL_CASES = [
    ({}, {}, None),
    ({"runner": {"journal_dir": "/r"}}, {}, None),
    ({"runner": {"journal_dir": "/r"}, "agent": {"journal": "/a"}}, {}, None),
    ({"runner": {"journal_dir": "/r"}, "agent": {"journal": "/a"}}, {"HOOKSCOPE_JOURNAL": "/old"}, None),
    ({"runner": {"journal_dir": "/r"}}, {"HOOKSCOPE_JOURNAL": "/old", "HOOKSCOPE_JOURNAL_DIR": "/new"}, None),
    ({"agent": {"journal": "/a"}}, {"HOOKSCOPE_JOURNAL_DIR": "/new"}, "/arg"),
]


def _toml(cfg):
    return "".join(f"[{sec}]\n" + "".join(f'{k} = "{v}"\n' for k, v in keys.items()) for sec, keys in cfg.items())


@pytest.mark.parametrize("cfg,env,arg", _SPOOL_CASES)
def test_doctor_checks_the_spool_the_agent_ships(tmp_path, monkeypatch, cfg, env, arg):
    """Same config, environment and argument: `hookscope doctor` and the agent resolve the same journal."""
    from emitter import doctor
    from emitter.config import load_config
    from emitter.config import journal_dir

    path = tmp_path / "hs.toml"
    path.write_text(_toml(cfg))
    for var in ("HOOKSCOPE_JOURNAL", "HOOKSCOPE_JOURNAL_DIR", "HOOKSCOPE_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    agent = AgentSettings.resolve(load_config(str(path)), journal=arg)
    setup, _ = doctor.resolve(str(path), journal=arg, skip_nats=True)
    assert setup.journal_dir == agent.journal == journal_dir(cfg, env, arg)[0]


def test_doctor_warns_when_the_runner_writes_elsewhere(tmp_path, monkeypatch):
    from emitter import doctor

    for var in ("HOOKSCOPE_JOURNAL", "HOOKSCOPE_JOURNAL_DIR"):
        monkeypatch.delenv(var, raising=False)
    path = tmp_path / "hs.toml"
    path.write_text('[runner]\njournal_dir = "/r"\n[agent]\njournal = "/a"\n')
    _, pre = doctor.resolve(str(path), skip_nats=True)
    (w,) = [c for c in pre if c.name == "journal"]
    assert w.status == doctor.WARN and "the runner writes /r but the agent ships /a" in w.message and w.fix


def test_doctor_uses_the_agents_node_and_login(tmp_path, monkeypatch):
    from emitter import doctor

    monkeypatch.setenv("HOOKSCOPE_NATS_USER", "envuser")
    monkeypatch.delenv("HOOKSCOPE_NODE", raising=False)
    path = tmp_path / "hs.toml"
    path.write_text('[runner]\nnode = "r1"\n[agent]\nnode = "a1"\nuser = "cfguser"\npassword = "pw"\n'
                    'nats = ["nats://x:1", "nats://y:2"]\n')
    setup, pre = doctor.resolve(str(path), skip_nats=True)
    agent = AgentSettings.resolve({"runner": {"node": "r1"}, "agent": {"node": "a1", "user": "cfguser",
                                                                     "password": "pw"}})
    assert setup.node == agent.node == "a1"
    assert setup.auth == agent.auth and setup.auth.user == "envuser"
    assert setup.nats_urls == ["nats://x:1", "nats://y:2"]


def test_agent_settings_are_frozen_and_carry_one_nats_auth(tmp_path):
    import dataclasses

    from emitter.natsauth import NatsAuth

    seed = tmp_path / "n.nk"
    seed.write_text("SU...\n")
    s = AgentSettings.resolve({"agent": {"nkey": str(seed)}}, env={"HOOKSCOPE_NATS_TOKEN": "t"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.nats = "nats://elsewhere:1"
    assert s.auth == NatsAuth(nkey=str(seed), token="t")
    assert s.nats_options().auth == s.auth
    with pytest.raises(AgentConfigError, match=r"nkey seed file .*nope.nk cannot be read \(it does not exist"):
        AgentSettings.resolve({"agent": {"nkey": str(tmp_path / "nope.nk")}}, env={})
    # the doctor's mode: the files are its own checks' business, the values still resolve
    assert AgentSettings.resolve({"agent": {"nkey": "/nope.nk"}}, env={}, check_files=False).nkey == "/nope.nk"


def test_journal_env_new_name_beats_the_deprecated_one():
    s = AgentSettings.resolve({}, env={"HOOKSCOPE_JOURNAL": "/old", "HOOKSCOPE_JOURNAL_DIR": "/new"})
    assert s.journal == "/new"
    assert AgentSettings.resolve({}, env={"HOOKSCOPE_JOURNAL": "/old"}).journal == "/old"

"""`hookscope agent` settings: precedence and clear errors (real CLI process)."""

import subprocess

from agentkit import HOOKSCOPE, job_env

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

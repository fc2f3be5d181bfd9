"""The runner's one resolver (issue 13): RunnerSettings and the journal-directory
rule, as pure functions (argument > environment > file > default, validated)."""

import subprocess
import sys
from pathlib import Path

import pytest

from emitter import config as cf
from emitter import contract
from emitter.config import JOURNAL_ENV, JOURNAL_ENV_OLD, RunnerSettings, journal_dir

REPO = Path(__file__).resolve().parents[2]


def test_precedence_argument_env_file_default():
    cfg = {"runner": {"journal_dir": "/file", "timeout_s": 7, "layout": "slinky"}}
    env = {JOURNAL_ENV: "/env"}
    s = RunnerSettings.resolve(cfg, env=env)
    assert s["journal_dir"] == "/env" and s.timeout_s == 7 and s["layout"] == "slinky"
    assert s["output_bytes"] == cf.RUNNER_KEYS["output_bytes"][1]  # default
    s = RunnerSettings.resolve(cfg, env=env, journal_dir="/arg", timeout_s=None, layout="run-parts")
    assert s.journal_dir == "/arg" and s.timeout_s == 7 and s.layout == "run-parts"  # None = not given
    assert RunnerSettings.resolve(cfg, env={}).journal_dir == "/file"
    assert RunnerSettings.resolve({}, env={}).journal_dir == contract.JOURNAL_DIR_DEFAULT
    # the old agent-only variable is not the runner's
    assert RunnerSettings.resolve({}, env={JOURNAL_ENV_OLD: "/old"}).journal_dir == contract.JOURNAL_DIR_DEFAULT


def test_runner_settings_and_resolve_give_the_same_object():
    cfg = {"runner": {"dirs": {"prolog_slurmd": ["/a", "/b"]}, "redact": ["x+"]}}
    s = RunnerSettings.resolve(cfg, env={"SLURMD_NODENAME": "gpu-1"}, fsync=False)
    assert s == cf.runner_settings(cfg, env={"SLURMD_NODENAME": "gpu-1"}, fsync=False)
    assert isinstance(cf.runner_settings({}), RunnerSettings)  # tests and the demo get the frozen type too
    assert s.node == "gpu-1" and cf.context_dirs(s, "prolog_slurmd") == ["/a", "/b"]
    assert s.get("dirs", {})["prolog_slurmd"] == ["/a", "/b"] and s.get("nope", 3) == 3
    assert "fsync" in s and set(s.keys()) == set(cf.RUNNER_KEYS)


def test_frozen_and_replace_validates():
    s = RunnerSettings.resolve({}, env={})
    with pytest.raises(AttributeError, match="frozen"):
        s.timeout_s = 3
    with pytest.raises(TypeError, match="frozen"):
        s["timeout_s"] = 3
    t = s.replace(timeout_s=3)
    assert t.timeout_s == 3 and s.timeout_s == 0
    with pytest.raises(cf.ConfigError, match=r"<arguments>.*runner.timeout_s must not be negative"):
        s.replace(timeout_s=-1)
    with pytest.raises(AttributeError, match="no runner setting 'bogus'"):
        s.bogus


@pytest.mark.parametrize("args,match", [
    ({"timeout_s": "soon"}, "runner.timeout_s must be"),
    ({"layout": "bogus"}, "runner.layout = 'bogus'; choose one of"),
    ({"journal_dir": ""}, "runner.journal_dir is empty"),
    ({"output_on": "sometimes"}, "runner.output_on = 'sometimes'"),
    ({"bogus": 1}, "unknown key runner.bogus"),
])
def test_bad_arguments_name_the_key(args, match):
    with pytest.raises(cf.ConfigError, match=match) as e:
        RunnerSettings.resolve({}, env={}, **args)
    assert "<arguments>" in str(e.value)


@pytest.mark.parametrize("cfg,env,arg,runner,agent", [
    ({}, {}, None, contract.JOURNAL_DIR_DEFAULT, contract.JOURNAL_DIR_DEFAULT),
    ({"runner": {"journal_dir": "/r"}}, {}, None, "/r", "/r"),
    ({"runner": {"journal_dir": "/r"}, "agent": {"journal": "/a"}}, {}, None, "/r", "/a"),
    ({"agent": {"journal": "/a"}}, {JOURNAL_ENV_OLD: "/old"}, None, contract.JOURNAL_DIR_DEFAULT, "/old"),
    ({"agent": {"journal": "/a"}}, {JOURNAL_ENV_OLD: "/old", JOURNAL_ENV: "/new"}, None, "/new", "/new"),
    ({"agent": {"journal": "/a"}}, {JOURNAL_ENV: "/new"}, "/arg", "/arg", "/arg"),
])
def test_journal_dir_rule(cfg, env, arg, runner, agent):
    assert journal_dir(cfg, env, arg, reader="runner")[0] == runner
    assert journal_dir(cfg, env, arg, reader="agent")[0] == agent


def test_journal_dir_says_where_it_came_from():
    assert journal_dir({"runner": {"journal_dir": "/r"}}, {}, None) == ("/r", "[runner] journal_dir")
    assert journal_dir({}, {JOURNAL_ENV: "/e"}) == ("/e", JOURNAL_ENV)
    assert journal_dir({}, {}, "/x") == ("/x", "argument")
    assert journal_dir({}, {})[1] == "default"


def test_settings_stay_off_the_hot_paths_heavy_imports():
    """RunnerSettings is on the hook's hot path: no dataclasses, typing or re there."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from emitter.config import RunnerSettings;"
            "RunnerSettings.resolve({}, env={}); import emitter.hook;"
            "print(sorted(m for m in ('dataclasses', 'typing', 're', 'tomllib', 'json') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(REPO)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert out.strip() == "[]", out

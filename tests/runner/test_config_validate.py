"""Every [runner] value is validated at load (issue 11 item 6), the node name
is resolved once (item 7), and as root an untrusted config is refused without
changing what the scripts return (issue 12 item 4)."""

import os
import re
import subprocess
import sys

import pytest

from tests.runner.conftest import ROOT, mkscript, records

from emitter import config as cf
from emitter.configsalvage import salvage_config


@pytest.mark.parametrize("text,match", [
    ("timeout_s = inf", "timeout_s = inf is not a finite number"),
    ("timeout_s = -inf", "not a finite number"),
    ("timeout_s = nan", "timeout_s = nan is not a finite number"),
    ("timeout_s = 1e308", "out of range (0 to 65535"),
    ("timeout_s = 65536", "out of range"),
    ("kill_grace_s = 1e9", "runner.kill_grace_s = 1000000000.0 is out of range"),
    ("redact_budget_s = 61", "runner.redact_budget_s = 61 is out of range (0 to 60"),
    ("redact_budget_s = nan", "not a finite number"),
    ("journal_batch = 0", "must be bool"),
    ("export_deadline_s = nan", "not a finite number"),
    ("output_bytes = 99999999999999999999", "out of range"),
    ("output_bytes = 1.5", "must be int, not float"),
    ("spool_max_bytes = -5", "must not be negative"),
    ("fsync = 1", "must be bool"),
    ('strict = "maybe"', 'use true, false, "auto"'),
    ('node = "a/b"', "runner.node = 'a/b' is not a usable name"),
    ('cluster = "c\\u001b[2J"', "runner.cluster"),
    ('journal_dir = "/x\\u0000y"', "NUL byte"),
    ('journal_dir = ""', "journal_dir is empty"),
    ('[runner.dirs]\nprolog_slurmd = ["/a", ""]', "empty path or a NUL"),
])
def test_bad_values_name_the_file_and_key(tmp_path, text, match):
    p = tmp_path / "h.toml"
    p.write_text("[runner]\n" + text + "\n")
    with pytest.raises(cf.ConfigError, match=match.replace("(", r"\(").replace("[", r"\[")) as ei:
        cf.load_config(p)
    assert str(p) in str(ei.value)


@pytest.mark.parametrize("value", ["true", "false", '"auto"', '"record"', '"enforce"', '"off"'])
def test_strict_values(tmp_path, value):
    p = tmp_path / "h.toml"
    p.write_text(f"[runner]\nstrict = {value}\n")
    assert "strict" in cf.load_config(p)["runner"]


def test_strict_modes():
    assert cf.strict_enabled(True) == "enforce" == cf.strict_enabled("enforce")
    assert cf.strict_enabled(False) == "off" == cf.strict_enabled("off")
    assert cf.strict_enabled("auto") == "record" == cf.strict_enabled("record")


def test_salvage_drops_only_the_bad_number(tmp_path):
    p = tmp_path / "h.toml"
    p.write_text('[runner]\ntimeout_s = 1e308\nkill_grace_s = nan\nlayout = "slinky"\n')
    assert salvage_config(str(p))["runner"] == {"layout": "slinky"}


@pytest.mark.parametrize("value", ["inf", "nan", "1e308"])
def test_hook_with_bad_timeout_returns_the_scripts_status(tmp_path, value):
    d = tmp_path / "prolog.d"
    mkscript(d, "10-a", "exit 0")
    mkscript(d, "20-b", "exit 4")
    d.chmod(0o755)
    j = tmp_path / "journal"
    conf = tmp_path / "h.toml"
    conf.write_text(f'[runner]\ntimeout_s = {value}\njournal_dir = "{j}"\nfsync = false\n'
                    f'[runner.dirs]\nprolog_slurmd = "{d}"\n')
    p = _hook(conf)
    assert p.returncode == 4, p.stderr  # reverse glob: 20-b runs first and fails
    assert "runner.timeout_s" in p.stderr and str(conf) in p.stderr and "Traceback" not in p.stderr
    started = [r for r in records(j) if r["kind"] == "hook_started"][0]
    assert any("runner.timeout_s" in w for w in started["warnings"])


def _hook(conf, extra_env=None, context="prolog_slurmd"):
    env = {"PATH": os.environ["PATH"], "SLURM_SCRIPT_CONTEXT": context, "SLURM_JOB_ID": "5",
           "HOOKSCOPE_CONFIG": str(conf), "HOOKSCOPE_CACHE_DIR": str(conf.parent / "cache"),
           **(extra_env or {})}
    return subprocess.run([sys.executable, "-c", "import sys; from emitter.hook import main; sys.exit(main())"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


# ---------------------------------------------------------------- node name
def test_node_from_slurmd_then_config_then_host():
    host = os.uname().nodename.split(".")[0]
    env = {"SLURMD_NODENAME": "gpu-007", "SLURM_SCRIPT_CONTEXT": "prolog_slurmd"}
    assert cf.runner_settings({"runner": {"node": "cfg"}}, env=env)["node"] == "gpu-007"
    assert cf.runner_settings({"runner": {"node": "cfg"}}, env={})["node"] == "cfg"
    assert cf.runner_settings({}, env={})["node"] == host
    # an explicit --node wins over everything
    assert cf.runner_settings({}, env=env, node="cli")["node"] == "cli"
    # a name that cannot be a file name part is not used
    assert cf.runner_settings({}, env={"SLURMD_NODENAME": "../x"})["node"] == host


@pytest.mark.parametrize("ctx", cf.CONTROLLER_CONTEXTS)
def test_controller_contexts_ignore_slurmd_nodename(ctx):
    host = os.uname().nodename.split(".")[0]
    env = {"SLURMD_NODENAME": "gpu-007"}
    assert cf.runner_settings({}, env=env, context=ctx)["node"] == host
    assert cf.runner_settings({"runner": {"node": "ctl1"}}, env=env, context=ctx)["node"] == "ctl1"


def test_hook_records_use_slurmd_nodename(tmp_path):
    d = tmp_path / "prolog.d"
    mkscript(d, "10-a", "exit 0")
    d.chmod(0o755)
    j = tmp_path / "journal"
    conf = tmp_path / "h.toml"
    conf.write_text(f'[runner]\njournal_dir = "{j}"\nfsync = false\n[runner.dirs]\nprolog_slurmd = "{d}"\n')
    p = _hook(conf, {"SLURMD_NODENAME": "slurm-name-1"})
    assert p.returncode == 0, p.stderr
    assert {r["node"] for r in records(j)} == {"slurm-name-1"}


# ---------------------------------------------------------------- config trust
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the trust check applies as root")


@root_only
@pytest.mark.parametrize("uid,mode,bit", [(65534, 0o644, "owned by uid 65534"), (0, 0o666, "o+w"),
                                          (0, 0o664, "g+w")])
def test_untrusted_config_is_refused_naming_file_and_bit(tmp_path, uid, mode, bit):
    p = tmp_path / "h.toml"
    p.write_text('[runner]\nlayout = "slinky"\n')
    os.chown(p, uid, -1)
    os.chmod(p, mode)
    with pytest.raises(cf.UntrustedError, match=re.escape(f"{bit}")) as ei:
        cf.load_config(p)
    assert str(p) in str(ei.value) and "built-in defaults" in str(ei.value)
    assert salvage_config(str(p)) == {}


@root_only
def test_config_in_a_writable_directory_is_refused(tmp_path):
    d = tmp_path / "etc"
    d.mkdir()
    os.chmod(d, 0o777)
    p = d / "h.toml"
    p.write_text("[runner]\n")
    with pytest.raises(cf.UntrustedError, match=r"directory .*etc is writable by others \(mode 0777, bit o\+w\)"):
        cf.load_config(p)


@root_only
def test_untrusted_config_falls_back_to_the_last_trusted_version(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOKSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    p = tmp_path / "h.toml"
    p.write_text('[runner]\nlayout = "slinky"\n')
    assert cf.load_config(p)["runner"]["layout"] == "slinky"
    p.write_text('[runner]\nlayout = "run-parts"\nstrict = false\n')
    os.chmod(p, 0o666)
    with pytest.raises(cf.UntrustedError, match="last trusted version"):
        cf.load_config(p)
    assert salvage_config(str(p))["runner"] == {"layout": "slinky"}


@root_only
def test_hook_ignores_world_writable_config_and_runs_defaults(tmp_path):
    """The issue-12 attack: nobody's 0666 config points the hook at a 0777 dir."""
    evil = tmp_path / "evil.d"
    marker = tmp_path / "pwned"
    mkscript(evil, "10-x", f"touch {marker}")
    os.chmod(evil, 0o777)
    j = tmp_path / "journal"
    conf = tmp_path / "h.toml"
    conf.write_text(f'[runner]\nstrict = false\njournal_dir = "{j}"\n[runner.dirs]\nprolog_slurmd = "{evil}"\n')
    os.chown(conf, 65534, 65534)
    os.chmod(conf, 0o666)
    good = tmp_path / "good.d"
    mkscript(good, "10-ok", "exit 0")
    p = _hook(conf, {"HOOKSCOPE_JOURNAL_DIR": str(j)}, context="prolog_slurmd")
    assert not marker.exists()
    assert "refusing config file" in p.stderr and "o+w" in p.stderr and str(conf) in p.stderr
    assert "ignoring what is invalid" not in p.stderr  # the file is ignored whole, not in part


def test_check_trusted_for_credentials(tmp_path):
    p = tmp_path / "node.creds"
    p.write_text("x")
    os.chmod(p, 0o600)
    cf.check_trusted(str(p), "NATS credentials file")  # fine
    os.chmod(p, 0o620)
    if os.geteuid() == 0:
        with pytest.raises(cf.UntrustedError, match=r"refusing NATS credentials file .*g\+w"):
            cf.check_trusted(str(p), "NATS credentials file")
    cf.check_trusted(str(p), "NATS credentials file", euid=1000)  # not root: nothing to check


@root_only
def test_hook_keeps_the_last_trusted_config_when_the_file_turns_untrusted(tmp_path):
    """A chmod by mistake (or an attacker's edit) must not change what the hook runs:
    the site's own directories still run from the last trusted parse."""
    site = tmp_path / "prolog.d"
    mkscript(site, "10-site", "exit 6")
    site.chmod(0o755)
    evil = tmp_path / "evil.d"
    marker = tmp_path / "pwned"
    mkscript(evil, "10-x", f"touch {marker}")
    j = tmp_path / "journal"
    conf = tmp_path / "h.toml"
    conf.write_text(f'[runner]\njournal_dir = "{j}"\nfsync = false\n[runner.dirs]\nprolog_slurmd = "{site}"\n')
    assert _hook(conf).returncode == 6  # trusted: parsed and cached
    conf.write_text(f'[runner]\njournal_dir = "{j}"\nstrict = false\n[runner.dirs]\nprolog_slurmd = "{evil}"\n')
    os.chmod(conf, 0o666)
    p = _hook(conf)
    assert p.returncode == 6 and not marker.exists(), p.stderr
    assert "refusing config file" in p.stderr and "o+w" in p.stderr and "last trusted version" in p.stderr
    started = [r for r in records(j) if r["kind"] == "hook_started"][-1]
    assert any("refusing config file" in w for w in started["warnings"])


def test_deprecated_kill_grace_s_still_loads_and_is_journaled(tmp_path):
    """kill_grace_s no longer does anything (scripts end as under slurmd: SIGTERM,
    SIGKILL 10 ms later); an old file still loads, and the hook says so."""
    d, j = tmp_path / "d", tmp_path / "j"
    mkscript(d, "10-ok", "exit 0")
    conf = tmp_path / "h.toml"
    conf.write_text(f'[runner]\nkill_grace_s = 2.5\nredact_budget_s = 0.2\njournal_dir = "{j}"\nfsync = false\n'
                    f'[runner.dirs]\nprolog_slurmd = "{d}"\n')
    assert cf.deprecations(cf.load_config(conf)) == [cf.DEPRECATED["kill_grace_s"]]
    assert cf.runner_settings(cf.load_config(conf))["redact_budget_s"] == 0.2
    p = _hook(conf)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    started = [r for r in records(j) if r["kind"] == "hook_started"][0]
    assert any("kill_grace_s is deprecated and ignored" in w for w in started["warnings"])

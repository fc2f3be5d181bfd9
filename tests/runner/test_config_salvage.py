"""A typo in one config key must not make hookscope-hook drop the site's own
directories (which would fail the hook and drain the node)."""

import os
import subprocess
import sys

from tests.runner.conftest import ROOT, mkscript, records

from emitter.configsalvage import salvage_config


def _hook(conf, tmp_path, context="prolog_slurmd"):
    env = {"PATH": os.environ["PATH"], "SLURM_SCRIPT_CONTEXT": context, "SLURM_JOB_ID": "5",
           "HOOKSCOPE_CONFIG": str(conf)}
    return subprocess.run([sys.executable, "-c", "import sys; from emitter.hook import main; sys.exit(main())"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)


def test_salvage_keeps_valid_keys_and_dirs(tmp_path):
    conf = tmp_path / "h.toml"
    conf.write_text('[runner]\njournal = "/x"\ntimeout_s = "30"\nlayout = "run-parts"\n'
                    '[runner.dirs]\nprolog_slurmd = "/etc/slurm/prolog.d"\n')
    cfg = salvage_config(str(conf))
    assert cfg["runner"] == {"layout": "run-parts", "dirs": {"prolog_slurmd": "/etc/slurm/prolog.d"}}


def test_salvage_of_invalid_toml_is_empty(tmp_path):
    conf = tmp_path / "h.toml"
    conf.write_text("[runner\n")
    assert salvage_config(str(conf)) == {}


def test_hook_with_a_typo_still_runs_the_configured_dir(tmp_path):
    d = tmp_path / "prolog.d"
    d.mkdir()
    d.chmod(0o755)
    mkscript(d, "10-fail", "echo bad; exit 3")
    j = tmp_path / "journal"
    conf = tmp_path / "h.toml"
    conf.write_text(f'[runner]\njournal_dir = "{j}"\nfsync = false\nlayot = "slurm"\n'
                    f'[runner.dirs]\nprolog_slurmd = "{d}"\n')
    p = _hook(conf, tmp_path)
    # The script's own status, not the "empty default directory" failure.
    assert p.returncode == 3, p.stderr
    assert "unknown key runner.layot" in p.stderr and str(conf) in p.stderr
    recs = records(j)
    started = [r for r in recs if r["kind"] == "hook_started"][0]
    assert any("runner.layot" in w for w in started["warnings"])
    ended = [r for r in recs if r["kind"] == "script_ended"]
    assert [os.path.basename(r["path"]) for r in ended] == ["10-fail"]

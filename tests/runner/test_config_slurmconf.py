"""slurm.conf as hookscope plan/doctor read it (Slurm 22.05 to 25.11): pure."""

import pytest

from emitter import slurmconf as sc


def _conf(tmp_path, text, name="slurm.conf"):
    p = tmp_path / name
    p.write_text(text)
    return sc.read(str(p))


def test_several_prolog_lines_keep_config_order_and_includes(tmp_path):
    (tmp_path / "more.conf").write_text("Prolog=/b/*\n")
    conf = _conf(tmp_path, "Prolog=/a/*\ninclude more.conf\nProlog=/opt/hookscope/bin/hookscope-hook\n"
                           "NodeName=n[1-2] CPUs=2\nPrologEpilogTimeout=30  # comment\n")
    assert sc.hook_values(conf, "Prolog") == ["/a/*", "/b/*", "/opt/hookscope/bin/hookscope-hook"]
    assert sc.last(conf, "PrologEpilogTimeout") == "30"
    assert sc.hook_values(conf, "Epilog") == []


@pytest.mark.parametrize("text,ctx,want", [
    ("PrologEpilogTimeout=8\n", "prolog_slurmd", (8, "PrologEpilogTimeout")),
    ("PrologEpilogTimeout=8\n", "epilog_slurmctld", (8, "PrologEpilogTimeout")),
    ("PrologEpilogTimeout=8\nPrologTimeout=20\n", "prolog_slurmd", (20, "PrologTimeout")),
    ("PrologEpilogTimeout=8\nPrologTimeout=20\n", "epilog_slurmd", (8, "PrologEpilogTimeout")),
    ("EpilogTimeout=5\n", "epilog_slurmd", (5, "EpilogTimeout")),
    ("PrologEpilogTimeout=65534\n", "prolog_slurmd", (None, "PrologEpilogTimeout")),
    ("PrologEpilogTimeout=UNLIMITED\n", "prolog_slurmd", (None, "PrologEpilogTimeout")),
    ("", "prolog_slurmd", (None, None)),
    ("PrologEpilogTimeout=8\n", "prolog_task", (None, None)),  # Slurm does not time task hooks
])
def test_hook_timeout_by_version(tmp_path, text, ctx, want):
    assert sc.hook_timeout(_conf(tmp_path, text), ctx) == want


def test_wrapper_timeout_is_n_budgets_plus_grace_and_margin():
    assert sc.wrapper_timeout(2, 5, 0) == 11
    assert sc.wrapper_timeout(3, 8, 1.0) == 28
    assert sc.wrapper_timeout(200, 0.05, 0.01) == 13  # 200 x 0.06 + 1, rounded up
    assert sc.wrapper_timeout(0, 8, 0) == 9  # an empty dir still needs one run's worth


def test_verdict_fails_when_slurm_conf_cuts_off_what_bare_slurmd_finishes(tmp_path):
    """The issue-11 case: two 5 s scripts, PrologEpilogTimeout=8: bare passes, wrapped drained."""
    conf = _conf(tmp_path, "PrologEpilogTimeout=8\n")
    status, msg, fix = sc.timeout_verdict(conf, "prolog_slurmd", 2, 0, 0.01)
    assert status == "FAIL" and "PrologEpilogTimeout=8" in msg and "2 script(s)" in msg
    assert "PrologTimeout=18" in fix and "runner.timeout_s = 8" in fix
    conf = _conf(tmp_path, "PrologEpilogTimeout=8\nPrologTimeout=18\n")
    status, msg, _ = sc.timeout_verdict(conf, "prolog_slurmd", 2, 8, 0.01)
    assert status == "OK" and "PrologTimeout=18" in msg
    assert sc.timeout_verdict(_conf(tmp_path, ""), "prolog_slurmd", 2, 0, 1) is None
    status, _, _ = sc.timeout_verdict(_conf(tmp_path, ""), "prolog_slurmd", 2, 5, 1)
    assert status == "OK"  # no slurm.conf timeout: nothing cuts the wrapper off


def test_prolog_flags(tmp_path):
    assert sc.prolog_flags(_conf(tmp_path, "PrologFlags=Alloc,RunInJob,Contain\n")) == {"alloc", "runinjob",
                                                                                        "contain"}


def test_glob_dirs():
    assert sc.glob_dirs(["/a/*", "/b/*", "/opt/hookscope/bin/hookscope-hook", "/etc/slurm/prolog.sh"]) == (
        ["/a", "/b", "/etc/slurm/prolog.sh"], [])
    dirs, problems = sc.glob_dirs(["/a/*.sh"])
    assert dirs == [] and "only DIR/* globs" in problems[0]


def _plan(tmp_path, *args):
    import os
    import subprocess
    import sys

    from tests.runner.conftest import ROOT

    (tmp_path / "empty.toml").write_text("")
    env = {"PATH": os.environ["PATH"], "HOOKSCOPE_CONFIG": str(tmp_path / "empty.toml")}
    return subprocess.run([sys.executable, "-m", "emitter.cli", "plan", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)


def test_plan_prints_the_timeout_the_wrapper_needs_and_fails(tmp_path):
    from tests.runner.conftest import mkscript

    for n in ("10-a", "20-b"):
        mkscript(tmp_path / "d", n, "sleep 5")
    conf = tmp_path / "slurm.conf"
    conf.write_text("Prolog=/opt/hookscope/bin/hookscope-hook\nPrologEpilogTimeout=8\nPrologFlags=RunInJob\n")
    p = _plan(tmp_path, "--context", "prolog_slurmd", "--dir", str(tmp_path / "d"), "--slurm-conf", str(conf))
    assert p.returncode == 1, p.stderr
    # 2 scripts x (8 s + slurmd's 0.01 s SIGTERM->SIGKILL gap) + 1 s = 17.02 s, rounded up
    assert "FAIL: Prolog: PrologEpilogTimeout=8" in p.stdout and "PrologTimeout=18" in p.stdout
    assert "job's cgroup" in p.stdout
    conf.write_text("PrologEpilogTimeout=8\nPrologTimeout=19\n")
    p = _plan(tmp_path, "--context", "prolog_slurmd", "--dir", str(tmp_path / "d"), "--slurm-conf", str(conf),
              "--timeout", "8")
    assert p.returncode == 0 and "OK: Prolog: PrologTimeout=19" in p.stdout, p.stdout + p.stderr
    p = _plan(tmp_path, "--dir", str(tmp_path / "d"), "--timeout", "1e308")
    assert p.returncode == 2 and "out of range" in p.stderr


def test_plan_from_several_prolog_lines_runs_each_glob_reversed_in_config_order(tmp_path):
    from tests.runner.conftest import mkscript

    for d in ("a", "b"):
        for n in ("1", "2"):
            mkscript(tmp_path / d, n)
    conf = tmp_path / "slurm.conf"
    conf.write_text(f"Prolog={tmp_path}/a/*\nProlog={tmp_path}/b/*\n")
    p = _plan(tmp_path, "--context", "prolog_slurmd", "--slurm-conf", str(conf), "--from-slurm-conf")
    assert p.returncode == 0, p.stderr
    runs = [ln.split()[-1] for ln in p.stdout.splitlines() if " run " in ln]
    assert runs == [f"{tmp_path}/a/2", f"{tmp_path}/a/1", f"{tmp_path}/b/2", f"{tmp_path}/b/1"]

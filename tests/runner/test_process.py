"""Across the process boundary: the real runner process, killed, signalled,
starved of disk; TaskProlog passthrough; hookscope-hook; the lean launcher."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emitter import contract as c
from emitter.journal import read_records

from tests.helpers import wait_for as _wait_for
from tests.helpers.mounts import tmpfs
from tests.runner.conftest import EMPTY_CONFIG, ROOT, hook_cmd, kinds, mkscript, records, run_hook


def _started(jdir):
    def pred():
        for p in Path(jdir).glob("*.jsonl"):
            recs, _ = read_records(p)
            if any(r[c.R_KIND] == c.K_SCRIPT_STARTED for r in recs):
                return p
        return None
    return pred


def _popen(args, **kw):
    env = dict(os.environ, HOOKSCOPE_CONFIG=EMPTY_CONFIG)
    env.pop("SLURM_SCRIPT_CONTEXT", None)
    return subprocess.Popen(hook_cmd("run", *args), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def test_kill_9_mid_script_leaves_a_journal_naming_the_running_script(tmp_path):
    jdir = tmp_path / "j"
    mkscript(tmp_path / "d", "10-first", "exit 0")
    mkscript(tmp_path / "d", "05-hangs", "sleep 30")
    p = _popen(["--context", "prolog_slurmd", "--dir", str(tmp_path / "d"), "--journal", str(jdir)])
    try:
        path = _wait_for(_started(jdir))
        _wait_for(lambda: sum(r[c.R_KIND] == c.K_SCRIPT_STARTED for r in read_records(path)[0]) == 2)
        p.kill()
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    recs, damage = read_records(path)
    assert damage == []
    assert kinds(recs) == ["hook_started", "script_started", "script_ended", "script_started"]
    assert recs[-1][c.R_PATH].endswith("05-hangs") and recs[-1][c.R_PID] == p.pid



def test_sigterm_like_slurmd_is_forwarded_and_recorded(tmp_path):
    """slurmd's timeout: SIGTERM to the runner; the script gets it, the hook ends, no more scripts run."""
    jdir = tmp_path / "j"
    marker = tmp_path / "got-term"
    trapped = tmp_path / "trapped"
    mkscript(tmp_path / "d", "20-hangs", f"trap 'echo term > {marker}; exit 143' TERM; : > {trapped}; "
                                         "sleep 30 & wait")
    mkscript(tmp_path / "d", "10-never", f"echo ran > {tmp_path / 'never'}")
    p = _popen(["--context", "prolog_slurmd", "--dir", str(tmp_path / "d"), "--journal", str(jdir)])
    try:
        path = _wait_for(_started(jdir))
        _wait_for(trapped.exists)  # the shell has installed its trap (a sleep was a guess)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=10)
        assert time.monotonic() - t0 < 5
    finally:
        if p.poll() is None:
            p.kill()
    recs, damage = read_records(path)
    assert not damage
    assert kinds(recs) == ["hook_started", "script_started", "script_ended", "hook_ended"]
    e, h = recs[2], recs[3]
    assert e[c.R_EXIT] in (143, 128 + 9)  # handled TERM in time, or killed 5 ms later
    assert e[c.R_RUNNER_SIGNAL] == signal.SIGTERM == h[c.R_RUNNER_SIGNAL], "killed by the runner's termination"
    assert h[c.R_FAILED_INDEX] is None, "the script's death is not blamed on the script"
    assert any("runner terminated by signal 15" in w for w in h[c.R_WARNINGS])
    assert rc == h[c.R_STATUS] == 128 + signal.SIGTERM
    assert not (tmp_path / "never").exists()


def test_taskprolog_stdout_passes_through_unchanged(tmp_path):
    jdir = tmp_path / "j"
    script_out = (b"export FOO=bar baz\nprint hello \xc3\xa9\n\nunset DISPLAY\n"
                  b"export   SECRET_TOKEN=s3cr3t\nno newline at end")
    (tmp_path / "out.bin").write_bytes(script_out)
    mkscript(tmp_path / "d", "10-task", f"cat {tmp_path / 'out.bin'}; echo to-stderr >&2")
    r = run_hook(["--context", "prolog_task", "--dir", str(tmp_path / "d"), "--journal", str(jdir)])
    assert r.returncode == 0, r.stderr
    assert r.stdout == script_out, "slurmstepd must read exactly what the script wrote"
    assert r.stderr == b"to-stderr\n"
    r = run_hook(["--context", "prolog_task", "--dir", str(tmp_path / "d"), "--journal", str(jdir),
                  "--no-passthrough"])
    assert r.stdout == script_out and r.stderr == b"", "the TaskProlog protocol is never held back"
    e = [x for x in records(jdir) if x[c.R_KIND] == c.K_SCRIPT_ENDED][0]
    assert e[c.R_EXPORTED] == ["FOO", "SECRET_TOKEN"] and e[c.R_UNSET] == ["DISPLAY"]
    assert "s3cr3t" not in str(records(jdir))


def test_non_task_output_goes_to_stdout_for_slurmd_to_log(tmp_path):
    mkscript(tmp_path / "d", "a", "echo out; echo err >&2; exit 2")
    r = run_hook(["--context", "prolog_slurmd", "--dir", str(tmp_path / "d"), "--journal", str(tmp_path / "j")])
    assert r.returncode == 2
    assert r.stdout == b"out\nerr\n"


@pytest.fixture
def tiny_tmpfs(tmp_path):
    # a full disk is simulated with a 64 KiB tmpfs
    with tmpfs(tmp_path / "spool", "size=64k,mode=0700") as mnt:
        yield mnt


def test_full_spool_keeps_status_counts_lost_and_reports_next_time(tmp_path, tiny_tmpfs):
    jdir = tiny_tmpfs / "journal"
    mkscript(tmp_path / "ok", "a", "exit 0")
    mkscript(tmp_path / "bad", "a", "echo failing; exit 4")
    args = ["--context", "prolog_slurmd", "--journal", str(jdir), "--no-fsync"]
    assert run_hook(args + ["--dir", str(tmp_path / "ok")]).returncode == 0  # preallocates <dir>/lost
    _fill(tiny_tmpfs / "filler")
    r = run_hook(args + ["--dir", str(tmp_path / "bad")])
    assert r.returncode == 4, r.stderr
    err = r.stderr.decode()
    assert "hookscope: journal" in err and str(jdir) in err and "status is unchanged" in err
    assert err.count("\n") == 1, "one line for slurmd's log, not one per record"
    n_lost, since = (jdir / "lost").read_text().split()
    assert int(n_lost) >= 3 and int(since) > 0
    os.unlink(tiny_tmpfs / "filler")
    r = run_hook(args + ["--dir", str(tmp_path / "ok")])
    assert r.returncode == 0
    recs = records(jdir)
    hs = [x for x in recs if x[c.R_KIND] == c.K_HOOK_STARTED][-1]
    assert any(w.startswith(f"lost {n_lost} journal records") for w in hs[c.R_WARNINGS])
    assert (jdir / "lost").read_text().split()[0] == "0"


def _fill(path):
    """Fill the file system to the last byte."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"x" * chunk)
                except OSError:
                    break
    finally:
        os.close(fd)


def test_read_only_spool_keeps_status(tmp_path, tiny_tmpfs):
    jdir = tiny_tmpfs / "journal"
    mkscript(tmp_path / "bad", "a", "exit 9")
    args = ["--context", "prolog_slurmd", "--journal", str(jdir), "--dir", str(tmp_path / "bad")]
    assert run_hook(args).returncode == 9
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    r = run_hook(args)
    assert r.returncode == 9
    assert "Read-only file system" in r.stderr.decode()


def test_hookscope_hook_uses_context_and_config(tmp_path):
    jdir = tmp_path / "j"
    mkscript(tmp_path / "pro", "a", "echo pro; exit 0")
    mkscript(tmp_path / "epi", "a", "exit 3")
    cfg = tmp_path / "h.toml"
    cfg.write_text(f'[runner]\njournal_dir = "{jdir}"\nfsync = false\ncluster = "c1"\n'
                   f'[runner.dirs]\nprolog_slurmd = "{tmp_path / "pro"}"\nepilog_slurmd = ["{tmp_path / "epi"}"]\n')
    env = {k: v for k, v in os.environ.items() if k != "PATH"}
    env.update(HOOKSCOPE_CONFIG=str(cfg), SLURM_JOB_ID="5")
    hook = [sys.executable, "-c", "import sys; from emitter.hook import main; sys.exit(main())"]
    r = subprocess.run(hook, env=dict(env, SLURM_SCRIPT_CONTEXT="prolog_slurmd"), cwd=ROOT, capture_output=True)
    assert r.returncode == 0 and r.stdout == b"pro\n"
    r = subprocess.run(hook, env=dict(env, SLURM_SCRIPT_CONTEXT="epilog_slurmd"), cwd=ROOT, capture_output=True)
    assert r.returncode == 3
    recs = records(jdir)
    assert [r[c.R_CONTEXT] for r in recs if r[c.R_KIND] == c.K_HOOK_STARTED] == ["prolog_slurmd", "epilog_slurmd"]
    assert {r[c.R_CLUSTER] for r in recs} == {"c1"}
    r = subprocess.run(hook, env=dict(env, SLURM_SCRIPT_CONTEXT="bogus"), cwd=ROOT, capture_output=True)
    assert r.returncode == 1 and b"SLURM_SCRIPT_CONTEXT" in r.stderr


def test_hookscope_hook_broken_config_still_runs_scripts(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[runner\nlayout = ")
    jdir = tmp_path / "j"
    env = dict(os.environ, HOOKSCOPE_CONFIG=str(cfg), SLURM_SCRIPT_CONTEXT="prolog_slurmd",
               HOOKSCOPE_JOURNAL_DIR=str(jdir))
    hook = [sys.executable, "-c", "import sys; from emitter.hook import main; sys.exit(main())"]
    r = subprocess.run(hook, env=env, cwd=ROOT, capture_output=True, text=True)
    assert str(cfg) in r.stderr and "invalid TOML" in r.stderr and "ignoring what is invalid" in r.stderr
    hs = records(jdir)[0]
    assert any("invalid TOML" in w for w in hs[c.R_WARNINGS])


_MODULES = """
import sys, os
sys.path.insert(0, {root!r})
from emitter import runner, config
s = config.runner_settings({{}}, journal_dir={j!r}, fsync=False)
status, _ = runner.run(s, "prolog_slurmd", [{d!r}], env={{}})
assert status == 0, status
from emitter import runcli, hook  # the CLI and hook entry points too
print(" ".join(sorted(sys.modules)))
"""
FORBIDDEN = ("json", "hashlib", "subprocess", "re", "tomllib", "argparse", "enum", "signal", "socket",
             "threading", "dataclasses", "inspect", "logging", "click", "email", "typing")


def test_hot_path_imports_only_light_stdlib(tmp_path):
    """python -IS as the launcher runs it: a successful hook imports none of the heavy modules."""
    mkscript(tmp_path / "d", "a", "exit 0")
    code = _MODULES.format(root=str(ROOT), j=str(tmp_path / "j"), d=str(tmp_path / "d"))
    r = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True)
    mods = set(r.stdout.split())
    assert not mods & set(FORBIDDEN), sorted(mods & set(FORBIDDEN))
    assert not [m for m in mods if m.split(".")[0] in ("collector", "queries", "dashboards", "nats", "duckdb")]
    # what only a failing, refused or logged script needs (emitter/journal_files.py is
    # imported here too: a new spool's eviction scan is due, as it is once per 5 s per node)
    assert not mods & {"emitter.runfail", "emitter.runlog", "emitter.redact"}, sorted(mods)


def test_lean_launcher_runs_the_hook(tmp_path):
    from emitter import launcher

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    os.symlink(sys.executable, venv / "bin" / "python")
    written = launcher.install(str(venv))
    hook = venv / "bin" / "hookscope-hook"
    text = hook.read_text()
    assert str(hook) in written and text.startswith("#!/bin/sh\n") and f"'{venv}/bin/python' -IS -c" in text
    mkscript(tmp_path / "d", "a", "echo lean")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[runner]\njournal_dir = "{tmp_path / "j"}"\n[runner.dirs]\nprolog_slurmd = "{tmp_path / "d"}"\n')
    r = subprocess.run([str(hook)], env={"SLURM_SCRIPT_CONTEXT": "prolog_slurmd", "HOOKSCOPE_CONFIG": str(cfg)},
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == "lean\n", r.stderr
    cli = venv / "bin" / "hookscope"
    r = subprocess.run([str(cli), "plan", "--dir", str(tmp_path / "d")], capture_output=True, text=True,
                       env={"HOOKSCOPE_CONFIG": str(cfg)})
    assert r.returncode == 0 and "1. run" in r.stdout
    r = subprocess.run([str(cli), "run", "--context", "prolog_slurmd", "--dir", str(tmp_path / "d")],
                       capture_output=True, text=True, env={"HOOKSCOPE_CONFIG": str(cfg)})
    assert r.returncode == 0 and r.stdout == "lean\n", r.stderr
    r = subprocess.run([str(cli), "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "usage: hookscope" in r.stdout


def test_plan_cli_shows_order_skips_and_refusals(tmp_path):
    mkscript(tmp_path / "d", "10-first")
    mkscript(tmp_path / "d", "20-second")
    mkscript(tmp_path / "d", "30-noexec", mode=0o644)
    mkscript(tmp_path / "d", ".hidden")
    env = dict(os.environ, HOOKSCOPE_CONFIG=EMPTY_CONFIG)
    r = subprocess.run(hook_cmd("plan", "--dir", str(tmp_path / "d"), "--no-strict"), cwd=ROOT, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "REVERSE" in out
    lines = [ln for ln in out.splitlines() if ln.strip()[:2] in ("1.", "2.", "3.")]
    assert "FAILS (127)" in lines[0] and "30-noexec" in lines[0]
    assert "the hook fails here" in out
    assert "20-second" in lines[1] and "10-first" in lines[2]
    assert ".hidden" in out.split("skipped:")[1]
    r = subprocess.run(hook_cmd("plan", "--layout", "run-parts", "--dir", str(tmp_path / "d"), "--no-strict"),
                       cwd=ROOT, env=env, capture_output=True, text=True)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()[:2] in ("1.", "2.")]
    assert "10-first" in lines[0] and "20-second" in lines[1]
    assert "30-noexec" in r.stdout.split("skipped:")[1]


def test_cli_usage_errors_and_help(tmp_path):
    r = run_hook(["--timeout", "abc"])
    assert r.returncode == 2 and b"--timeout" in r.stderr
    r = run_hook(["--bogus"])
    assert r.returncode == 2 and b"unrecognized arguments" in r.stderr
    r = run_hook(["--help"])
    assert r.returncode == 0 and b"Example:" in r.stdout
    r = run_hook(["--journal", str(tmp_path)])
    assert r.returncode == 2 and b"no --dir and no context" in r.stderr
    r = run_hook(["--context", "nope", "--dir", str(tmp_path)])
    assert r.returncode == 2 and b"unknown context" in r.stderr


def test_inherited_ignored_sigchld_and_sigpipe_do_not_leak(tmp_path):
    """Started without the launcher (python -m): a parent that ignores SIGCHLD/SIGPIPE.  Statuses
    are still seen; SIGCHLD is always default for scripts, and whether SIGPIPE was ignored is
    unknown to Python (CPython ignores it at start-up), so scripts get it at its default.
    Through the launcher it is exact (test_fidelity_process.py)."""
    out = tmp_path / "sig.txt"
    # grep reads its own status: what sh passed on (sh cannot un-ignore what it inherited ignored).
    mkscript(tmp_path / "d", "a", f"grep -E '^SigIgn' /proc/self/status > {out}; exit 3")
    code = ("import signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN);"
            "signal.signal(signal.SIGPIPE, signal.SIG_IGN);"
            "import os; os.execv(sys.argv[1], sys.argv[1:])")  # ignored dispositions survive exec
    env = dict(os.environ, HOOKSCOPE_CONFIG=EMPTY_CONFIG)
    r = subprocess.run([sys.executable, "-c", code, *hook_cmd("run", "--context", "prolog_slurmd", "--dir",
                        str(tmp_path / "d"), "--journal", str(tmp_path / "j"))], cwd=ROOT, env=env,
                       capture_output=True)
    assert r.returncode == 3, r.stderr
    masks = dict(line.split(":\t") for line in out.read_text().splitlines())
    assert int(masks["SigIgn"], 16) & ((1 << (signal.SIGPIPE - 1)) | (1 << (signal.SIGCHLD - 1))) == 0


def test_closed_std_fds_keep_status_and_journal_clean(tmp_path):
    """slurmd always gives fds 0-2, but if they are closed, neither a pipe nor the
    journal may land on them (passed-through output would corrupt the journal)."""
    jdir = tmp_path / "j"
    mkscript(tmp_path / "d", "a", "echo some output; echo more >&2; exit 5")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[runner]\njournal_dir = "{jdir}"\n[runner.dirs]\nprolog_slurmd = "{tmp_path / "d"}"\n')
    hook = f"{sys.executable} -c 'import sys; from emitter.hook import main; sys.exit(main())'"
    for redir in ("2>&-", ">&- 2>&-", "<&- >&- 2>&-"):
        r = subprocess.run(["/bin/sh", "-c", f"exec {hook} {redir}"], cwd=ROOT, capture_output=True,
                           env=dict(os.environ, SLURM_SCRIPT_CONTEXT="prolog_slurmd", HOOKSCOPE_CONFIG=str(cfg)))
        assert r.returncode == 5, (redir, r.stderr)
    recs = records(jdir)  # asserts every line parses and hashes
    assert [r[c.R_STATUS] for r in recs if r[c.R_KIND] == c.K_HOOK_ENDED] == [5, 5, 5]
    assert (jdir / "lost").read_text().split()[0] == "0"


def test_exit_now_flushes_python_streams_and_keeps_the_status():
    """The lean launchers end with exit_now (os._exit: no 2 ms of finalization):
    what Python buffered still comes out, and the status is the hook's."""
    code = ("import sys; from emitter.hook import exit_now; sys.stdout.write('out'); "
            "sys.stderr.write('err'); exit_now(7)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True)
    assert (p.returncode, p.stdout, p.stderr) == (7, b"out", b"err")

"""The runner against real scripts: exit status in every failure mode, records,
environment, output, timeouts, leftover children."""

import os
import time

import pytest

from emitter import contract as c
from emitter import runner

from tests.helpers import wait_for
from tests.runner.conftest import IS_ROOT, ROOT, kinds, mkscript, records


def _run(settings, d, context="prolog_slurmd", env=None, **over):
    env = {"SLURM_JOB_ID": "42", "PATH": os.environ["PATH"]} if env is None else env
    status, j = runner.run(settings(**over), context, [str(d)], env=env)
    return status, j


def _ended(recs):
    return [r for r in recs if r[c.R_KIND] == c.K_SCRIPT_ENDED]


def _hook_ended(recs):
    (h,) = [r for r in recs if r[c.R_KIND] == c.K_HOOK_ENDED]
    return h


def test_all_pass_records_pairs_and_job(tmp_path, jdir, settings):
    for n in ("a", "b", "c"):
        mkscript(tmp_path / "d", n, "echo $0")
    env = {"SLURM_JOB_ID": "42", "SLURM_JOB_USER": "alice", "SLURM_JOB_GPUS": "0,1",
           "CUDA_VISIBLE_DEVICES": "1", "PATH": "/usr/bin:/bin"}
    status, _ = _run(settings, tmp_path / "d", env=env)
    assert status == 0
    recs = records(jdir)
    assert kinds(recs) == ["hook_started"] + ["script_started", "script_ended"] * 3 + ["hook_ended"]
    hs = recs[0]
    assert hs[c.R_CONTEXT] == "prolog_slurmd" and hs[c.R_LAYOUT] == "slurm"
    assert hs[c.R_JOB]["job_id"] == "42" and hs[c.R_JOB]["gpus"] == "0,1"
    assert hs[c.R_JOB]["cuda_visible_devices"] == "1" and hs[c.R_JOB]["partition"] is None
    assert set(hs[c.R_JOB]) == set(c.JOB_ENV)
    s0 = recs[1]
    assert s0[c.R_PATH].endswith("/c") and s0[c.R_INDEX] == 0  # reverse order
    import hashlib
    assert s0[c.R_SHA256] == hashlib.sha256((tmp_path / "d" / "c").read_bytes()).hexdigest()
    st = (tmp_path / "d" / "c").stat()
    assert (s0[c.R_SIZE], s0[c.R_MODE], s0[c.R_UID], s0[c.R_MTIME]) == (st.st_size, st.st_mode, st.st_uid,
                                                                        st.st_mtime_ns)
    e = _ended(recs)[0]
    assert e[c.R_EXIT] == 0 and e[c.R_OUTPUT] is None and e[c.R_SIGNAL] is None and not e[c.R_TIMED_OUT]
    h = _hook_ended(recs)
    assert h[c.R_STATUS] == 0 and h[c.R_N_SCRIPTS] == 3 and h[c.R_FAILED_INDEX] is None


def test_script_fails_stops_and_status_is_the_scripts(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "10", "echo never")
    mkscript(tmp_path / "d", "20", "echo 'boom token=abc123' ; exit 3")
    mkscript(tmp_path / "d", "30", "echo first")
    status, _ = _run(settings, tmp_path / "d")
    assert status == 3
    recs = records(jdir)
    ends = _ended(recs)
    assert [os.path.basename(e[c.R_PATH]) for e in ends] == ["30", "20"]
    assert ends[1][c.R_EXIT] == 3 and ends[1][c.R_OUTPUT] == "boom token=[REDACTED]\n"
    h = _hook_ended(recs)
    assert (h[c.R_STATUS], h[c.R_FAILED_INDEX], h[c.R_N_SCRIPTS]) == (3, 1, 2)


def test_killed_by_signal(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "k", "kill -SEGV $$")
    status, _ = _run(settings, tmp_path / "d")
    assert status == 128 + 11
    e = _ended(records(jdir))[0]
    assert e[c.R_SIGNAL] == 11 and e[c.R_EXIT] == 139 and not e[c.R_TIMED_OUT]


def test_timeout_sigterm_then_recorded(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "hang", "sleep 30")
    t0 = time.monotonic()
    status, _ = _run(settings, tmp_path / "d", timeout_s=0.3)
    assert time.monotonic() - t0 < 5
    assert status == 128 + 15
    e = _ended(records(jdir))[0]
    assert e[c.R_TIMED_OUT] and e[c.R_SIGNAL] == 15 and 0.3e9 <= e[c.R_DURATION_NS] < 3e9


def test_timeout_sigkill_10ms_after_sigterm_when_ignored_like_slurmd(tmp_path, jdir, settings):
    """slurmd's _kill_pg: SIGTERM to the group, SIGKILL 10 ms later (kill_grace_s no longer applies)."""
    mkscript(tmp_path / "d", "stubborn", "trap '' TERM; echo trapped; while :; do sleep 0.05; done")
    t0 = time.monotonic()
    status, _ = _run(settings, tmp_path / "d", timeout_s=0.3)
    assert status == 128 + 9 and 0.3 <= time.monotonic() - t0 < 5
    e = _ended(records(jdir))[0]
    assert e[c.R_TIMED_OUT] and e[c.R_SIGNAL] == 9 and "trapped" in e[c.R_OUTPUT]


def test_timeout_is_per_script_not_per_hook(tmp_path, jdir, settings):
    """slurmd gives every script the full PrologEpilogTimeout: three 1 s scripts pass a 2.5 s budget."""
    for n in "abc":
        mkscript(tmp_path / "d", n, "sleep 1")
    status, _ = _run(settings, tmp_path / "d", timeout_s=2.5)
    assert status == 0
    assert [e[c.R_TIMED_OUT] for e in _ended(records(jdir))] == [False, False, False]


def test_non_executable_is_127_in_slurm_layout(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "a")
    mkscript(tmp_path / "d", "b", mode=0o644)
    status, _ = _run(settings, tmp_path / "d")
    assert status == 127
    recs = records(jdir)
    assert kinds(recs) == ["hook_started", "script_started", "script_ended", "hook_ended"]
    assert recs[1][c.R_PATH].endswith("/b") and recs[1][c.R_MODE] & 0o777 == 0o644
    assert recs[2][c.R_EXIT] == 127 and "not executable" in recs[2][c.R_OUTPUT]


def test_exec_format_error_is_127(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "noshebang", "exit 0", shebang="")
    status, _ = _run(settings, tmp_path / "d")
    assert status == 127
    assert "cannot execute" in _ended(records(jdir))[0][c.R_OUTPUT]


def test_run_parts_skips_non_executable_and_exits_1(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "a", mode=0o644)
    mkscript(tmp_path / "d", "b", "exit 7")
    mkscript(tmp_path / "d", "c", "exit 0")
    status, _ = _run(settings, tmp_path / "d", layout="run-parts")
    assert status == 1
    recs = records(jdir)
    assert kinds(recs) == ["hook_started", "script_skipped", "script_started", "script_ended", "hook_ended"]
    assert recs[1][c.R_INDEX] is None and "not executable" in recs[1][c.R_REASON]


def test_run_parts_keep_going_runs_all_exit_1(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "a", "exit 4")
    mkscript(tmp_path / "d", "b", "exit 0")
    mkscript(tmp_path / "d", "c", "exit 5")
    status, _ = _run(settings, tmp_path / "d", layout="run-parts", keep_going=True)
    assert status == 1
    recs = records(jdir)
    assert [e[c.R_EXIT] for e in _ended(recs)] == [4, 0, 5]
    assert _hook_ended(recs)[c.R_FAILED_INDEX] == 0


@pytest.mark.skipif(not IS_ROOT, reason="strict mode's ownership check needs root (chown)")
def test_refused_permissions_is_126_with_reason(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "ok")
    bad = mkscript(tmp_path / "d", "writable")
    os.chmod(bad, 0o775)
    status, _ = _run(settings, tmp_path / "d", strict=True)
    assert status == 126
    recs = records(jdir)
    e = _ended(recs)[0]
    assert e[c.R_REFUSED] and str(bad) in e[c.R_REFUSED] and "g+w" in e[c.R_REFUSED] and e[c.R_EXIT] == 126
    assert recs[1][c.R_SHA256]  # what could be stat'ed and hashed is recorded
    os.chmod(bad, 0o755)
    os.chown(bad, 1000, 1000)
    status, _ = _run(settings, tmp_path / "d", strict=True)
    assert status == 126 and "owned by uid 1000" in _ended(records(jdir))[-1][c.R_REFUSED]
    status, _ = _run(settings, tmp_path / "d", strict=False)
    assert status == 0


def test_empty_directory_fails_unless_opted_out(tmp_path, jdir, settings):
    (tmp_path / "d").mkdir()
    status, _ = _run(settings, tmp_path / "d")
    assert status == 1
    h = _hook_ended(records(jdir))
    assert h[c.R_STATUS] == 1 and h[c.R_N_SCRIPTS] == 0 and "empty_ok" in h[c.R_WARNINGS][0]
    status, _ = _run(settings, tmp_path / "d", empty_ok=True)
    assert status == 0
    assert "nothing ran" in _hook_ended(records(jdir)[2:])[c.R_WARNINGS][0]
    status, _ = _run(settings, tmp_path / "d", layout="run-parts")
    assert status == 0


def test_environment_no_args_devnull_stdin_rdwr_and_no_path_added(tmp_path, jdir, settings):
    out = tmp_path / "env.txt"
    mkscript(tmp_path / "d", "e", f'echo "args=$# path=$(/usr/bin/tr "\\\\0" "\\\\n" </proc/$$/environ | /bin/grep -c ^PATH=) job=$SLURM_JOB_ID" > {out}; '
                                  f'cat >> {out}; echo "stdin-done" >> {out}; echo probe >&0 && echo w-ok >> {out}; '
                                  f'/bin/ps -o pgid= -p $$ | /usr/bin/tr -d " " >> {out}; echo $$ >> {out}')
    status, _ = _run(settings, tmp_path / "d", env={"SLURM_JOB_ID": "9"})
    assert status == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "args=0 path=0 job=9", "slurmd gives no PATH, and neither do we"
    assert lines[1:3] == ["stdin-done", "w-ok"], "stdin is /dev/null opened read-write, as slurmd's"
    assert lines[3] == lines[4], "each script leads its own process group"


def test_background_child_holding_stdout_delays_the_hook_and_is_evidence(tmp_path, jdir, settings):
    """slurmd reads the pipe until EOF: a background child that keeps stdout holds the hook."""
    mkscript(tmp_path / "d", "bg", "/bin/sh -c 'sleep 0.7; :' --password=hunter2 & exit 0")
    t0 = time.monotonic()
    status, _ = _run(settings, tmp_path / "d")
    assert status == 0 and time.monotonic() - t0 >= 0.7
    e = _ended(records(jdir))[0]
    assert e[c.R_EXIT_NS] < e[c.R_DURATION_NS] and e[c.R_DURATION_NS] >= 0.7e9
    # The background shell, seen before or after its exec, and maybe its sleep.
    (lo, *_) = e[c.R_LEFTOVERS]
    assert lo[c.LO_FATE] == "exited" and 0.4e9 < lo[c.LO_HELD_NS] <= e[c.R_DURATION_NS]
    assert "hunter2" not in str(e), "command lines are redacted like output"
    assert all("--password=[REDACTED]" in x[c.LO_CMD] for x in e[c.R_LEFTOVERS] if "--password" in x[c.LO_CMD])


def test_leftover_in_the_group_gets_sigterm_after_the_script_exits(tmp_path, jdir, settings):
    """After EOF and the exit, slurmd's _kill_pg: the group's members get SIGTERM, then SIGKILL."""
    pidfile = tmp_path / "bg.pid"
    # The script closes its stdout first: EOF comes before its exit (slurmd then waits for the exit).
    mkscript(tmp_path / "d", "bg", f"exec >/dev/null 2>&1; ( while :; do sleep 0.05; done ) & "
                                   f"echo $! > {pidfile}; sleep 0.2; exit 0")
    status, _ = _run(settings, tmp_path / "d")
    assert status == 0
    pid = int(pidfile.read_text())
    wait_for(lambda: not _alive(pid), 30, what="the background child to die after its script ended",
             interval=0.01)
    e = _ended(records(jdir))[0]
    left = {lo[c.LO_PID]: lo for lo in e[c.R_LEFTOVERS]}
    assert left[pid][c.LO_FATE] == "killed" and left[pid][c.LO_HELD_NS] is None, "it did not hold the pipe"
    assert {lo[c.LO_FATE] for lo in left.values()} == {"killed"}  # and its own sleep


def test_timeout_with_a_leftover_holding_the_pipe_keeps_the_scripts_status(tmp_path, jdir, settings):
    """slurmd: poll timeout -> _kill_pg -> waitpid: the script had exited 0, so the status is 0."""
    mkscript(tmp_path / "d", "bg", "sleep 30 & exit 0")
    status, _ = _run(settings, tmp_path / "d", timeout_s=0.5)
    assert status == 0
    e = _ended(records(jdir))[0]
    assert e[c.R_TIMED_OUT] and e[c.R_EXIT] == 0
    assert [lo[c.LO_FATE] for lo in e[c.R_LEFTOVERS]] == ["killed"]


def _alive(pid):
    """Running, not a zombie waiting for init to reap it."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_output_tail_is_bounded_and_stored_on_failure_only(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "big", "i=0; while [ $i -lt 2000 ]; do echo line$i; i=$((i+1)); done; exit 1")
    status, _ = _run(settings, tmp_path / "d", output_bytes=100)
    assert status == 1
    e = _ended(records(jdir))[0]
    assert e[c.R_OUTPUT_TRUNCATED] and len(e[c.R_OUTPUT]) == 100 and e[c.R_OUTPUT].endswith("line1999\n")


def test_output_on_knob(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "ok", "echo fine")
    _run(settings, tmp_path / "d", output_on="always")
    assert _ended(records(jdir))[0][c.R_OUTPUT] == "fine\n"
    mkscript(tmp_path / "d2", "bad", "echo bad; exit 2")
    _run(settings, tmp_path / "d2", output_on="never")
    assert _ended(records(jdir))[-1][c.R_OUTPUT] is None


def test_custom_redaction_patterns(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "s", "echo 'site-secret-XYZ Authorization: Bearer abcdefghijkl'; exit 1")
    _run(settings, tmp_path / "d", redact=[r"site-secret-\w+"])
    out = _ended(records(jdir))[0][c.R_OUTPUT]
    assert "XYZ" not in out and "abcdefghijkl" not in out and "[REDACTED]" in out


def test_tensorwave_log_file(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "10-ok", "echo quiet")
    mkscript(tmp_path / "d", "20-noexec", mode=0o644)
    mkscript(tmp_path / "d", "30-bad", "echo 'it broke'; exit 6")
    log = tmp_path / "log" / "{node}.log"
    env = {"SLURM_JOB_ID": "77", "SLURM_JOB_USER": "bob", "PATH": "/usr/bin:/bin"}
    status, _ = _run(settings, tmp_path / "d", env=env, layout="tensorwave", log_file=str(log))
    assert status == 6
    text = (tmp_path / "log" / "n1.log").read_text()
    lines = text.splitlines()
    assert "job=77 user=bob path=" in lines[0] and "10-ok exit=0" in lines[0] and "quiet" not in text
    assert "WARNING skipped" in lines[1] and "20-noexec" in lines[1]
    assert "30-bad exit=6" in lines[2] and lines[3].strip() == "| it broke"
    assert lines[0][:4].isdigit() and "T" in lines[0].split()[0]


def test_journal_failure_never_changes_status(tmp_path, settings, capfd):
    f = tmp_path / "file"
    f.write_text("")
    mkscript(tmp_path / "d", "a", "exit 0")
    mkscript(tmp_path / "e", "a", "exit 5")
    assert runner.run(settings(journal_dir=str(f / "j")), "prolog_slurmd", [str(tmp_path / "d")], env={})[0] == 0
    assert runner.run(settings(journal_dir=str(f / "j")), "prolog_slurmd", [str(tmp_path / "e")], env={})[0] == 5
    assert "not written" in capfd.readouterr().err


def test_a_journal_bug_never_stops_the_scripts(tmp_path, jdir, settings, monkeypatch, capfd):
    from emitter import journal as jn

    def boom(*a, **k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(jn, "_chain_append", boom)
    ran = tmp_path / "ran"
    mkscript(tmp_path / "d", "a", f"touch {ran}; exit 4")
    status, _ = _run(settings, tmp_path / "d")
    assert status == 4 and ran.exists()
    assert capfd.readouterr().err.count("internal error") == 1


def test_job_metadata_aliases_and_nulls():
    """What real Slurm 22.05 gives: slurmd's prolog has SLURM_NODELIST only; slurmctld writes '(null)'."""
    md = runner.job_metadata({"SLURM_JOB_ID": "12", "SLURM_NODELIST": "vm", "SLURM_JOB_ACCOUNT": "(null)",
                              "SLURM_JOB_RESTART_COUNT": "1"})
    assert md["job_id"] == "12" and md["nodelist"] == "vm" and md["account"] is None
    assert md["restart_count"] == "1"
    md = runner.job_metadata({"SLURM_JOBID": "7", "SLURM_JOB_NODELIST": "a[1-2]", "SLURM_NODELIST": "x",
                              "SLURM_STEPID": "0"})
    assert (md["job_id"], md["nodelist"], md["step_id"]) == ("7", "a[1-2]", "0")
    assert set(md) == set(c.JOB_ENV)


def test_stop_on_failure_knob_off_in_slurm_layout_keeps_first_status(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "1", "exit 0")
    mkscript(tmp_path / "d", "2", "exit 9")
    mkscript(tmp_path / "d", "3", "exit 8")
    status, _ = _run(settings, tmp_path / "d", stop_on_failure=False)
    assert status == 8  # reverse order: 3 fails first and decides; 2 and 1 still run
    recs = records(jdir)
    assert [os.path.basename(e[c.R_PATH]) for e in _ended(recs)] == ["3", "2", "1"]
    assert _hook_ended(recs)[c.R_FAILED_INDEX] == 0


def test_order_and_name_filter_knobs_override_preset(tmp_path, jdir, settings):
    for n in ("a.sh", "b.sh", "c.txt"):
        mkscript(tmp_path / "d", n, "exit 0")
    status, _ = _run(settings, tmp_path / "d", order="ascending", name_filter=r".*\.sh")
    assert status == 0
    recs = records(jdir)
    assert [os.path.basename(e[c.R_PATH]) for e in _ended(recs)] == ["a.sh", "b.sh"]
    assert [os.path.basename(r[c.R_PATH]) for r in recs if r[c.R_KIND] == c.K_SCRIPT_SKIPPED] == ["c.txt"]


def test_run_parts_daemon_survives_across_scripts_and_is_passed_through(tmp_path, jdir, settings):
    """run-parts waits for the child only: a daemon holding stdout keeps running while the
    next scripts run, its output still reaches the runner's stdout (slurmd's pipe)."""
    import subprocess
    import sys

    mkscript(tmp_path / "d", "10-daemon", "( sleep 0.5; echo late-daemon-line ) & echo started")
    mkscript(tmp_path / "d", "20-next", f"echo next; umask > {tmp_path / 'umask'}")
    code = ("import sys, os; sys.path.insert(0, {root!r}); from emitter import runner, config;"
            "s = config.runner_settings({{}}, journal_dir={j!r}, fsync=False, layout='run-parts', node='n');"
            "sys.exit(runner.run(s, 'prolog_slurmd', [{d!r}], env={{'PATH': os.environ['PATH']}})[0])")
    code = code.format(root=str(ROOT), j=str(jdir), d=str(tmp_path / "d"))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"started\nnext\nlate-daemon-line\n", "the runner's stdout is a pipe: read to EOF"
    assert time.monotonic() - t0 >= 0.5
    assert (tmp_path / "umask").read_text().strip() == "0022"
    first = _ended(records(jdir))[0]
    left = first[c.R_LEFTOVERS]  # the subshell (and its sleep, if it had started), holding stdout
    assert left and {lo[c.LO_FATE] for lo in left} == {"running"} and all(lo[c.LO_HELD_NS] is None for lo in left)


def test_posix_spawn_fallback_gives_the_same_state(tmp_path, jdir, settings, monkeypatch):
    """Where CPython's private vfork+exec is not the one we know, posix_spawn starts the
    scripts: same stdin, pipe, group, environment (only glibc's signals 32/33 differ)."""
    from emitter import process

    monkeypatch.setattr(process, "_FORK_EXEC", False)
    out = tmp_path / "o"
    mkscript(tmp_path / "d", "e", f'echo "args=$# job=$SLURM_JOB_ID" > {out}; echo probe >&0 && echo w-ok >> {out}; '
                                  f'/bin/ps -o pgid= -p $$ | /usr/bin/tr -d " " >> {out}; echo $$ >> {out}; exit 4')
    status, _ = _run(settings, tmp_path / "d", env={"SLURM_JOB_ID": "9"})
    assert status == 4
    lines = out.read_text().splitlines()
    assert lines[:2] == ["args=0 job=9", "w-ok"] and lines[2] == lines[3]
    mkscript(tmp_path / "bad", "x", shebang="#!/nonexistent/interpreter\n")
    status, _ = _run(settings, tmp_path / "bad")
    assert status == 127


def test_script_that_closes_stdout_then_hangs_is_timed_out(tmp_path, jdir, settings):
    """EOF before the exit: slurmd waits for the exit until the timeout (run_command_waitpid_timeout)."""
    mkscript(tmp_path / "d", "quiet", "exec >/dev/null 2>&1; sleep 30")
    status, _ = _run(settings, tmp_path / "d", timeout_s=0.5)
    assert status == 128 + 15
    e = _ended(records(jdir))[0]
    assert e[c.R_TIMED_OUT] and e[c.R_SIGNAL] == 15 and e[c.R_EXIT_NS] >= 0.5e9


def test_run_parts_timeout_signals_the_script_only(tmp_path, jdir, settings):
    """run-parts style: the script shares the runner's group, so the budget signals it alone."""
    mkscript(tmp_path / "d", "10-hang", "sleep 30")
    status, _ = _run(settings, tmp_path / "d", layout="run-parts", timeout_s=0.5)
    assert status == 1
    e = _ended(records(jdir))[0]
    assert e[c.R_TIMED_OUT] and e[c.R_SIGNAL] == 15


def test_tensorwave_log_shows_names_and_output_as_data(tmp_path, jdir, settings):
    """The per-node log is read with tail -f: no escape sequence from a script's
    output or name reaches the terminal; a tab and ordinary text stay as they are."""
    d = tmp_path / "d"
    mkscript(d, "10-\x1b[2Jname", "printf 'a\\tb \\033]52;c;AAAA\\007 \\342\\200\\256rtl\\n'; exit 4")
    log = tmp_path / "log" / "{node}.log"
    env = {"SLURM_JOB_ID": "77", "SLURM_JOB_USER": "bob\x1b[31m"}
    status, _ = _run(settings, d, env=env, layout="tensorwave", log_file=str(log))
    assert status == 4
    text = (tmp_path / "log" / "n1.log").read_text()
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "10-\\x1b[2Jname exit=4" in text and "user=bob\\x1b[31m" in text
    assert "| a\tb \\x1b]52;c;AAAA\\x07 \\u202ertl" in text


def test_script_started_records_its_own_findings(tmp_path, jdir, settings):
    """strict "auto": a group-writable script runs (as under slurmd) and its
    script_started names the finding; a clean script's record has none."""
    d = tmp_path / "d"
    mkscript(d, "10-loose", "exit 0", mode=0o775)
    mkscript(d, "20-tight", "exit 0")
    status, _ = _run(settings, d, layout="slinky", strict="auto")
    assert status == 0
    started = {os.path.basename(r[c.R_PATH]): r for r in records(jdir) if r[c.R_KIND] == c.K_SCRIPT_STARTED}
    assert c.R_FINDINGS not in started["20-tight"]
    (f,) = started["10-loose"][c.R_FINDINGS]
    assert "10-loose" in f and "group" in f


@pytest.mark.parametrize("batch", [True, False])
def test_journal_batches_never_delay_crash_evidence(tmp_path, jdir, settings, batch):
    """Each script finds, before it starts, its own script_started and the
    previous script's script_ended already in the journal file (so a runner
    killed with -9 while it runs leaves both); records keep their event time."""
    d = tmp_path / "d"
    probe = ('f=$(ls "$J"/*.jsonl); grep -q "\\"kind\\":\\"script_started\\".*\\"path\\":\\"$0\\"" $f || exit 9; '
             '[ -z "$PREV" ] || grep -q "\\"kind\\":\\"script_ended\\".*\\"path\\":\\"$PREV\\"" $f || exit 8')
    mkscript(d, "10-a", f'J={jdir}; PREV=; {probe}')
    mkscript(d, "20-b", f'J={jdir}; PREV={d / "10-a"}; {probe}')
    mkscript(d, "30-c", f'J={jdir}; PREV={d / "20-b"}; {probe}')
    status, _ = _run(settings, d, layout="slinky", journal_batch=batch)
    assert status == 0
    recs = records(jdir)
    kinds = [r[c.R_KIND] for r in recs]
    assert kinds == [c.K_HOOK_STARTED] + [c.K_SCRIPT_STARTED, c.K_SCRIPT_ENDED] * 3 + [c.K_HOOK_ENDED]
    assert [r[c.R_SEQ] for r in recs] == list(range(recs[0][c.R_SEQ], recs[0][c.R_SEQ] + len(recs)))
    ts = [r[c.R_TS] for r in recs]
    assert ts == sorted(ts)  # a batched script_ended keeps the time it was made, before the next start


def test_journal_append_many_is_one_chained_write(tmp_path):
    from emitter.journal import Journal

    j = Journal(tmp_path / "j", node="n1", cluster="t", fsync=False)
    out = j.append_many([(c.K_HOOK_STARTED, {c.R_WARNINGS: []}, 5), (c.K_SCRIPT_SKIPPED, {c.R_PATH: "/x"}, None)])
    j.close()
    assert [r[c.R_SEQ] for r in out] == [1, 2] and out[1][c.R_PREV] == out[0][c.R_HASH]
    assert out[0][c.R_TS] == 5 and out[1][c.R_TS] > 5
    assert [r[c.R_KIND] for r in records(tmp_path / "j")] == [c.K_HOOK_STARTED, c.K_SCRIPT_SKIPPED]


@pytest.mark.parametrize("layout", ["slurm", "run-parts"])
def test_a_hook_leaves_no_reference_cycles_per_script(tmp_path, jdir, settings, layout):
    """The lean launcher runs the hook with the cyclic GC off (emitter/launcher.py):
    the garbage only a collection could free must not grow with the number of scripts."""
    import gc

    def cyclic_garbage(n):
        d = tmp_path / f"d{n}"
        for i in range(n):
            mkscript(d, f"s{i:02d}", "echo out; echo err >&2")
        gc.collect()
        gc.disable()
        try:
            status, _ = _run(settings, d, layout=layout)
            assert status == 0
            return gc.collect()
        finally:
            gc.enable()

    cyclic_garbage(2)  # first use: lazy imports and caches
    few, many = cyclic_garbage(2), cyclic_garbage(22)
    assert many - few < 20, (few, many)  # less than one object per extra script

"""The runner against real scripts: exit status in every failure mode, records,
environment, output, timeouts, leftover children."""

import os
import time

import pytest

from emitter import contract as c
from emitter import runner

from conftest import IS_ROOT, kinds, mkscript, records


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


def test_timeout_sigkill_after_grace_when_sigterm_ignored(tmp_path, jdir, settings):
    mkscript(tmp_path / "d", "stubborn", "trap '' TERM; echo trapped; while :; do sleep 0.05; done")
    t0 = time.monotonic()
    status, _ = _run(settings, tmp_path / "d", timeout_s=0.3, kill_grace_s=0.3)
    took = time.monotonic() - t0
    assert status == 128 + 9 and 0.55 < took < 5
    e = _ended(records(jdir))[0]
    assert e[c.R_TIMED_OUT] and e[c.R_SIGNAL] == 9 and "trapped" in e[c.R_OUTPUT]


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


def test_environment_no_args_devnull_stdin_and_safe_path(tmp_path, jdir, settings):
    out = tmp_path / "env.txt"
    mkscript(tmp_path / "d", "e", f'echo "args=$# path=$PATH job=$SLURM_JOB_ID"  > {out}; '
                                  f'cat >> {out}; echo "stdin-done" >> {out}; '
                                  f'ps -o pgid= -p $$ | tr -d " " >> {out}; echo $$ >> {out}')
    status, _ = _run(settings, tmp_path / "d", env={"SLURM_JOB_ID": "9"}, safe_path="/usr/bin:/bin")
    assert status == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "args=0 path=/usr/bin:/bin job=9"
    assert lines[1] == "stdin-done"
    assert lines[2] == lines[3], "each script leads its own process group"


def test_leftover_children_are_killed_when_the_script_exits(tmp_path, jdir, settings):
    pidfile = tmp_path / "bg.pid"
    mkscript(tmp_path / "d", "bg", f"sleep 30 & echo $! > {pidfile}; exit 0")
    t0 = time.monotonic()
    status, _ = _run(settings, tmp_path / "d")
    assert status == 0 and time.monotonic() - t0 < 5, "the runner does not wait for a background child"
    pid = int(pidfile.read_text())
    for _ in range(500):
        if not _alive(pid):
            break
        time.sleep(0.01)
    else:
        pytest.fail("the background child survived its script")


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

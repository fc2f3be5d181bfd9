"""The journal reader on real files: order, completeness, abandonment, damage."""

import os
import subprocess
import sys
import time

from tests.agent.agentkit import write_hooks_fast

from emitter import contract as c
from emitter import spool


def test_complete_files_in_chain_order(tmp_path):
    write_hooks_fast(tmp_path, 5)
    files = spool.scan(str(tmp_path))
    assert [f.state for f in files] == [spool.COMPLETE] * 5
    seqs = [f.first_seq for f in files]
    assert seqs == sorted(seqs) and seqs[0] == 1
    assert all(not f.damage for f in files)
    assert all(len(f.entries) == 6 for f in files)


def test_order_follows_seq_not_name(tmp_path):
    write_hooks_fast(tmp_path, 2)
    a, b = spool.list_files(str(tmp_path))
    # give the later hook an earlier name: order must still follow the chain
    os.rename(b, os.path.join(tmp_path, "00000000000000000001-" + "f" * 16 + ".jsonl"))
    files = spool.scan(str(tmp_path))
    assert files[0].path == a


def test_torn_last_line_reported_rest_recovered(tmp_path):
    write_hooks_fast(tmp_path, 1)
    (p,) = spool.list_files(str(tmp_path))
    with open(p, "ab") as f:
        f.write(b'{"kind":"script_sta')
    jf = spool.read_file(p, grace_s=0)
    assert len(jf.entries) == 6 and jf.state == spool.COMPLETE
    assert len(jf.damage) == 1 and "torn last line" in jf.damage[0]
    (r,) = spool.damage_records(jf)
    assert r[c.R_KIND] == c.K_JOURNAL_ERROR and r[c.R_PATH] == p


def test_bad_hash_kept_and_reported(tmp_path):
    write_hooks_fast(tmp_path, 1)
    (p,) = spool.list_files(str(tmp_path))
    lines = open(p).read().splitlines()
    lines[1] = lines[1].replace('"size":10', '"size":11')
    open(p, "w").write("\n".join(lines) + "\n")
    jf = spool.read_file(p)
    assert len(jf.entries) == 6  # shipped as written; the store's verifier flags it
    assert any("hash does not match" in d for d in jf.damage)


def test_incomplete_file_of_live_runner_is_running_dead_runner_abandoned(tmp_path):
    from emitter.journal import Journal

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        j = Journal(tmp_path, node="n1", cluster="c1", fsync=False, pid=proc.pid)
        j.append(c.K_HOOK_STARTED, {c.R_CONTEXT: "prolog_slurmd", c.R_JOB: {}, c.R_WARNINGS: []})
        j.append(c.K_SCRIPT_STARTED, {c.R_INDEX: 0, c.R_PATH: "/x"})
        path = j.path
        later = time.time_ns() + 10 * 10**9
        assert spool.read_file(path).state == spool.RUNNING  # fresh
        assert spool.read_file(path, now_ns=later).state == spool.RUNNING  # old, runner alive
    finally:
        proc.kill()
        proc.wait()
    assert spool.read_file(path, now_ns=later).state == spool.ABANDONED
    assert spool.read_file(path, now_ns=later, grace_s=60).state == spool.RUNNING  # within grace
    assert spool.ready(spool.scan(str(tmp_path), now_ns=later))[0].path == path


def test_reused_pid_is_not_our_runner(tmp_path):
    # our own PID is alive, but it started long after this made-up first record
    assert spool.runner_alive(os.getpid(), time.time_ns())
    assert not spool.runner_alive(os.getpid(), 10**18)  # year 2001: before this process started
    assert not spool.runner_alive(None)


def test_temp_and_foreign_files_ignored_and_remove_is_idempotent(tmp_path):
    write_hooks_fast(tmp_path, 1)
    (tmp_path / ".tmp-000-x.jsonl").write_text("{}")
    (tmp_path / "notes.txt").write_text("x")
    (p,) = spool.list_files(str(tmp_path))
    assert spool.remove(p) and not spool.remove(p)
    assert spool.scan(str(tmp_path)) == [] and spool.scan(str(tmp_path / "nope")) == []


def test_light_scan_agrees_with_full_read(tmp_path):
    write_hooks_fast(tmp_path, 3)
    (tmp_path / "x").mkdir()
    light = spool.scan(str(tmp_path), full=False)
    full = spool.scan(str(tmp_path))
    assert [(f.path, f.state, f.first_seq, f.hook_id, f.started) for f in light] == \
        [(f.path, f.state, f.first_seq, f.hook_id, f.started) for f in full]
    assert all(len(f.entries) == 2 for f in light)
    loaded = spool.load_full(light[0])
    assert loaded.entries == full[0].entries and loaded.full

"""The journal writer: encoding, hash chain, concurrency, eviction, lost records."""

import json
import os
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from emitter import contract as c
from emitter import journal as jn

from tests.runner.conftest import ROOT, records

# JSON values as the journal holds them (no floats but finite ones, str keys).
_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text() | \
    st.floats(allow_nan=False, allow_infinity=False)
_values = st.recursive(_scalars, lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(), ch, max_size=4),
                       max_leaves=12)


@given(_values)
def test_dumps_is_canonical_json(v):
    assert jn.dumps(v) == c.canonical_json(v)


@hsettings(max_examples=200)
@given(st.dictionaries(st.sampled_from([c.R_PATH, c.R_OUTPUT, "exit_code", "job", "zz", "aa", "hooks", "hoo"]),
                       _values, max_size=6), st.text())
def test_seal_line_is_canonical_and_hash_matches_contract(fields, hook):
    rec = dict(fields, kind="script_ended", seq=3, prev=c.CHAIN_GENESIS, hook=hook)
    line = jn.seal(rec)
    assert line.endswith(b"\n")
    assert line[:-1].decode("utf-8") == c.canonical_json(rec)
    assert rec[c.R_HASH] == c.record_hash(rec)
    assert json.loads(line) == rec


def test_seal_without_hook_key_and_with_surrogates():
    rec = {"kind": "node_event", "path": "/etc/slurm/prolog.d/bad\udcff"}
    line = jn.seal(rec)
    back = json.loads(line)
    assert back["path"] == "/etc/slurm/prolog.d/bad\ufffd"
    assert back[c.R_HASH] == c.record_hash(back)


def _journal(d, **kw):
    kw.setdefault("fsync", False)
    return jn.Journal(d, node="n1", cluster="cl", **kw)


def test_chain_across_files_and_fields(tmp_path):
    for _ in range(3):
        j = _journal(tmp_path)
        j.append(c.K_HOOK_STARTED, {c.R_WARNINGS: []})
        j.append(c.K_HOOK_ENDED, {c.R_STATUS: 0})
        j.close()
    recs = records(tmp_path)
    assert [r[c.R_SEQ] for r in recs] == list(range(1, 7))
    assert recs[0][c.R_PREV] == c.CHAIN_GENESIS
    for a, b in zip(recs, recs[1:]):
        assert b[c.R_PREV] == a[c.R_HASH]
    chain = recs[0][c.R_CHAIN]
    assert len(chain) == 16 and int(chain, 16) >= 0 and {r[c.R_CHAIN] for r in recs} == {chain}
    head = (tmp_path / c.CHAIN_HEAD_FILE).read_text()
    assert head == f"6 {recs[-1][c.R_HASH]} {chain}\n"
    r = recs[0]
    assert (r[c.R_VERSION], r[c.R_NODE], r[c.R_CLUSTER], r[c.R_PID]) == (c.SCHEMA_VERSION, "n1", "cl", os.getpid())
    assert isinstance(r[c.R_TS], int) and len(r[c.R_HOOK_ID]) == 16
    f = next(tmp_path.glob("*.jsonl"))
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    assert oct(tmp_path.stat().st_mode & 0o777) in ("0o700", oct(tmp_path.stat().st_mode & 0o777))
    name = f.name
    assert len(name.split("-")[0]) == 20 and name.endswith(c.JOURNAL_SUFFIX)


def test_new_spool_dir_is_0700(tmp_path):
    d = tmp_path / "spool" / "journal"
    _journal(d).close()
    assert oct(d.stat().st_mode & 0o777) == "0o700"


_WRITER = """
import sys
sys.path.insert(0, {root!r})
from emitter import contract as c
from emitter.journal import Journal
for i in range({n}):
    j = Journal({d!r}, node="n1", cluster="cl", fsync=False)
    j.append(c.K_HOOK_STARTED, {{}})
    for k in range(3):
        j.append(c.K_SCRIPT_STARTED, {{c.R_INDEX: k}})
        j.append(c.K_SCRIPT_ENDED, {{c.R_INDEX: k, c.R_OUTPUT: "x" * (k * 5000)}})
    j.append(c.K_HOOK_ENDED, {{c.R_STATUS: 0}})
    j.close()
"""


def test_chain_is_correct_under_concurrent_runners(tmp_path):
    """Several real processes append at once: seqs 1..N, no gap, no duplicate, prev links."""
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER.format(root=str(ROOT), n=15, d=str(tmp_path))])
             for _ in range(4)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    recs = records(tmp_path)
    assert len(recs) == 4 * 15 * 8
    assert [r[c.R_SEQ] for r in recs] == list(range(1, len(recs) + 1))
    by_hash = {r[c.R_HASH] for r in recs}
    assert len(by_hash) == len(recs)
    for a, b in zip(recs, recs[1:]):
        assert b[c.R_PREV] == a[c.R_HASH]
    pids = {r[c.R_PID] for r in recs}
    assert len(pids) == 4


def test_corrupt_chain_head_restarts_with_warning(tmp_path, capfd):
    j = _journal(tmp_path)
    j.append(c.K_HOOK_STARTED, {})
    j.close()
    (tmp_path / c.CHAIN_HEAD_FILE).write_text("garbage\x00\n")
    j = _journal(tmp_path)
    rec = j.append(c.K_HOOK_STARTED, {c.R_WARNINGS: ["w0"]})
    j.close()
    assert rec[c.R_SEQ] == 1 and rec[c.R_PREV] == c.CHAIN_GENESIS
    assert rec[c.R_WARNINGS][0] == "w0"
    assert any("chain.head" in w and "restarts" in w for w in rec[c.R_WARNINGS])
    assert "chain.head" in capfd.readouterr().err


def _one(d, **fields):
    j = _journal(d)
    rec = j.append(c.K_HOOK_STARTED, dict({c.R_WARNINGS: []}, **fields))
    j.close()
    return rec


def test_chain_id_is_kept_across_hooks_and_sealed(tmp_path):
    a, b = _one(tmp_path), _one(tmp_path)
    assert a[c.R_CHAIN] == b[c.R_CHAIN] and b[c.R_SEQ] == 2
    # the chain id is part of the hashed body: changing it breaks the hash
    assert c.record_hash(dict(b, chain="0" * 16)) != b[c.R_HASH] == c.record_hash(b)
    assert jn.seal(dict(b))[:-1].decode() == c.canonical_json(b)


@pytest.mark.parametrize("damage", ["delete", "garbage", "bad_chain_token", "four_tokens"])
def test_lost_or_corrupt_chain_head_starts_a_new_chain_at_seq_1(tmp_path, damage):
    """A re-created journal must not reuse the old chain id: the store keys
    journal rows by (cluster, node, chain, seq) and would drop the new records."""
    _one(tmp_path)
    old = _one(tmp_path)
    head = tmp_path / c.CHAIN_HEAD_FILE
    if damage == "delete":
        head.unlink()
    elif damage == "garbage":
        head.write_text("garbage\x00\n")
    elif damage == "bad_chain_token":
        head.write_text(f"2 {old[c.R_HASH]} not-a-chain-id!\n")
    else:
        head.write_text(f"2 {old[c.R_HASH]} {old[c.R_CHAIN]} extra\n")
    new = _one(tmp_path)
    assert new[c.R_SEQ] == 1 and new[c.R_PREV] == c.CHAIN_GENESIS
    assert len(new[c.R_CHAIN]) == 16 and new[c.R_CHAIN] != old[c.R_CHAIN]
    assert head.read_text() == f"1 {new[c.R_HASH]} {new[c.R_CHAIN]}\n"
    nxt = _one(tmp_path)
    assert (nxt[c.R_SEQ], nxt[c.R_PREV], nxt[c.R_CHAIN]) == (2, new[c.R_HASH], new[c.R_CHAIN])


def test_two_token_head_from_before_chain_ids_is_upgraded_keeping_seq(tmp_path):
    h = "ab" * 32
    head = tmp_path / c.CHAIN_HEAD_FILE
    head.write_text(f"41 {h}\n")
    rec = _one(tmp_path)
    assert (rec[c.R_SEQ], rec[c.R_PREV]) == (42, h)
    assert not any("restarts" in w for w in rec[c.R_WARNINGS])
    chain = rec[c.R_CHAIN]
    assert len(chain) == 16 and head.read_text() == f"42 {rec[c.R_HASH]} {chain}\n"
    nxt = _one(tmp_path)  # the id is created once, then kept
    assert (nxt[c.R_SEQ], nxt[c.R_PREV], nxt[c.R_CHAIN]) == (43, rec[c.R_HASH], chain)


def test_standalone_records_carry_the_chain(tmp_path):
    rec = _one(tmp_path)
    path = jn.write_standalone(tmp_path, [{c.R_KIND: c.K_NODE_EVENT, c.R_STATE: "drain"}], node="n1")
    recs, damage = jn.read_records(path)
    assert not damage and recs[0][c.R_CHAIN] == rec[c.R_CHAIN] and recs[0][c.R_SEQ] == 2


def test_read_records_reports_torn_and_altered_lines(tmp_path):
    j = _journal(tmp_path)
    for i in range(3):
        j.append(c.K_SCRIPT_STARTED, {c.R_INDEX: i})
    j.close()
    p = next(tmp_path.glob("*.jsonl"))
    lines = p.read_bytes().split(b"\n")
    altered = lines[1].replace(b'"index":1', b'"index":7')
    p.write_bytes(lines[0] + b"\n" + altered + b"\n" + lines[2][:30])
    recs, damage = jn.read_records(p)
    assert [r[c.R_INDEX] for r in recs] == [0]
    assert len(damage) == 2
    assert "line 2: hash mismatch" in damage[0]
    assert "line 3: torn last line" in damage[1]


def _complete_file(d, size_pad=0, complete=True):
    j = _journal(d)
    j.append(c.K_HOOK_STARTED, {})
    j.append(c.K_SCRIPT_ENDED, {c.R_OUTPUT: "p" * size_pad})
    if complete:
        j.append(c.K_HOOK_ENDED, {c.R_STATUS: 0})
    j.close()
    return j.path


def test_spool_bound_evicts_oldest_complete_files_and_reports(tmp_path):
    old_incomplete = _complete_file(tmp_path, 20_000, complete=False)
    olds = [_complete_file(tmp_path, 20_000) for _ in range(5)]
    standalone = jn.write_standalone(tmp_path, [{c.R_KIND: c.K_NODE_EVENT, c.R_STATE: "drain",
                                                 c.R_REASON: "Prolog error", c.R_SOURCE: "test"}])
    first_seq = records(tmp_path)[0][c.R_SEQ]
    j = _journal(tmp_path, spool_max_bytes=60_000, evict_interval=0)
    j.append(c.K_HOOK_STARTED, {})
    j.close()
    assert os.path.exists(old_incomplete), "an incomplete file (runner may still be alive) is never evicted"
    gone = [p for p in olds if not os.path.exists(p)]
    assert gone and gone == olds[: len(gone)], "oldest first"
    total = sum(p.stat().st_size for p in tmp_path.glob("*.jsonl"))
    assert total <= 60_000
    mine = jn.read_records(j.path)[0]
    assert [r[c.R_KIND] for r in mine] == [c.K_SPOOL_EVICTED, c.K_HOOK_STARTED]
    ev = mine[0]
    assert ev[c.R_EVICTED_FILES] == len(gone)
    assert ev[c.R_EVICTED_BYTES] >= 20_000 * len(gone)
    assert ev[c.R_EVICTED_SEQS][0] > first_seq  # the incomplete file's seqs were kept
    assert ev[c.R_EVICTED_SEQS][0] <= ev[c.R_EVICTED_SEQS][1]
    assert os.path.exists(standalone) or len(gone) == 5


def test_spool_bound_is_checked_at_most_once_per_interval(tmp_path):
    """The scan stats every waiting file; with a big backlog a hook must not pay
    it every time.  Within the interval a hook opens without scanning; once the
    marker is older than the interval, the next hook evicts."""
    olds = [_complete_file(tmp_path, 20_000) for _ in range(5)]  # the first one scanned: marker fresh
    marker = tmp_path / jn.EVICT_MARKER
    assert marker.exists()
    j = _journal(tmp_path, spool_max_bytes=60_000, evict_interval=3600)
    j.close()
    assert all(os.path.exists(p) for p in olds), "checked within the interval: no scan"
    os.utime(marker, (time.time() - 7200, time.time() - 7200))
    j = _journal(tmp_path, spool_max_bytes=60_000, evict_interval=3600)
    j.append(c.K_HOOK_STARTED, {})
    j.close()
    assert not os.path.exists(olds[0])
    assert sum(p.stat().st_size for p in tmp_path.glob("*.jsonl")) <= 60_000
    assert jn.read_records(j.path)[0][0][c.R_KIND] == c.K_SPOOL_EVICTED
    assert time.time() - marker.stat().st_mtime < 60


def test_no_eviction_under_the_bound(tmp_path):
    _complete_file(tmp_path)
    j = _journal(tmp_path, spool_max_bytes=10**9)
    j.append(c.K_HOOK_STARTED, {})
    j.close()
    assert [r[c.R_KIND] for r in jn.read_records(j.path)[0]] == [c.K_HOOK_STARTED]


def test_write_standalone_fills_defaults_chains_and_is_atomic(tmp_path):
    _complete_file(tmp_path)
    p = jn.write_standalone(tmp_path, [
        {c.R_KIND: c.K_NODE_EVENT, c.R_STATE: "drain", c.R_REASON: "Prolog error", c.R_SOURCE: "scontrol"},
        {c.R_KIND: c.K_JOURNAL_ERROR, c.R_PATH: "/x.jsonl", c.R_REASON: "torn"},
    ], node="n9", cluster="cc")
    assert os.path.basename(p).endswith(c.JOURNAL_SUFFIX) and not os.path.basename(p).startswith(".")
    assert not list(tmp_path.glob(".tmp-*"))
    recs = records(tmp_path)
    assert [r[c.R_SEQ] for r in recs] == [1, 2, 3, 4, 5]
    sa = jn.read_records(p)[0]
    assert sa[0][c.R_NODE] == "n9" and sa[0][c.R_CLUSTER] == "cc" and sa[0][c.R_VERSION] == c.SCHEMA_VERSION
    assert sa[0][c.R_PREV] == recs[2][c.R_HASH]
    assert sa[0][c.R_HOOK_ID] == sa[1][c.R_HOOK_ID]


def test_write_standalone_errors_name_the_directory(tmp_path):
    with pytest.raises(jn.JournalError, match="kind"):
        jn.write_standalone(tmp_path, [{c.R_KIND: "bogus"}])
    f = tmp_path / "afile"
    f.write_text("")
    with pytest.raises(jn.JournalError, match=str(f)):
        jn.write_standalone(f / "sub", [{c.R_KIND: c.K_NODE_EVENT}])


def test_unwritable_spool_counts_nothing_raises_nothing(tmp_path, capfd):
    f = tmp_path / "notadir"
    f.write_text("")
    j = _journal(f / "journal")
    assert j.append(c.K_HOOK_STARTED, {}) is None
    j.close()
    err = capfd.readouterr().err
    assert "journal" in err and str(f / "journal") in err and "status is unchanged" in err
    assert j.lost == 1


def test_missing_chain_head_with_existing_files_warns(tmp_path):
    _complete_file(tmp_path)
    os.unlink(tmp_path / c.CHAIN_HEAD_FILE)
    j = _journal(tmp_path)
    rec = j.append(c.K_HOOK_STARTED, {c.R_WARNINGS: []})
    j.close()
    assert rec[c.R_SEQ] == 1 and any("was missing" in w for w in rec[c.R_WARNINGS])
    j = _journal(tmp_path / "fresh")
    rec = j.append(c.K_HOOK_STARTED, {c.R_WARNINGS: []})
    assert rec[c.R_WARNINGS] == []


def test_a_runner_killed_between_head_and_line_leaves_a_gap_not_a_reused_seq(tmp_path):
    """slurmd SIGKILLs 10 ms after SIGTERM, while the runner writes its last
    records.  Killed inside the append, the head has already moved: the next
    hook skips that seq (a gap verify reports) instead of reusing it (two
    records with one key, of which the store keeps one)."""
    j = _journal(tmp_path)
    first = j.append(c.K_HOOK_STARTED, {})
    j.close()
    pid = os.fork()
    if pid == 0:  # the runner: killed after the head moved, before its line is written
        try:
            fd = os.open(tmp_path / c.CHAIN_HEAD_FILE, os.O_RDWR)
            jn._chain_append(fd, [{c.R_KIND: c.K_HOOK_ENDED, c.R_HOOK_ID: "k" * 16}],
                             lambda data: os.kill(os.getpid(), 9), lambda data: None)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == 9
    j = _journal(tmp_path)
    nxt = j.append(c.K_HOOK_STARTED, {})
    j.close()
    assert nxt[c.R_SEQ] == first[c.R_SEQ] + 2  # a gap of one, no reuse
    seqs = [r[c.R_SEQ] for r in records(tmp_path)]
    assert len(seqs) == len(set(seqs))


def test_a_line_that_cannot_be_written_puts_the_head_back(tmp_path):
    j = _journal(tmp_path)
    first = j.append(c.K_HOOK_STARTED, {})
    j.close()
    head = (tmp_path / c.CHAIN_HEAD_FILE).read_bytes()
    fd = os.open(tmp_path / c.CHAIN_HEAD_FILE, os.O_RDWR)
    try:
        def full(data):
            raise OSError(28, "No space left on device")

        with pytest.raises(OSError):
            jn._chain_append(fd, [{c.R_KIND: c.K_HOOK_ENDED, c.R_HOOK_ID: "k" * 16}], full, lambda data: None)
    finally:
        os.close(fd)
    assert (tmp_path / c.CHAIN_HEAD_FILE).read_bytes() == head
    j = _journal(tmp_path)
    assert j.append(c.K_HOOK_STARTED, {})[c.R_SEQ] == first[c.R_SEQ] + 1
    j.close()

"""The collector's own compactor (collector/autocompact.py): the file count
per (table, day) stays bounded however many fetches land in a day, every row
is read exactly once throughout, a kill -9 in the middle of an automatic
merge leaves a consistent archive, and the real collector does it on its own."""

import os
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from collector import compact as cp
from collector.autocompact import AutoCompactor, first_open_day
from collector.config import CollectorConfig
from collector.errors import CollectorError
from queries.source import open_source
from tests.collector.test_compact import NODES, ROOT, _write, data_files, keys

DAY = "2026-11-02"
N = 4
#: files of one open partition between passes, with at most 3 size levels
#: of @compact files (the partitions written here stay within a factor 64)
BOUND = N + 3 * (cp.FANOUT - 1)


def _tiered(d):
    """The bound's invariant: at most N collector files and FANOUT - 1
    @compact files per size level."""
    names = [f for f in os.listdir(d) if f.endswith(".parquet") and not f.startswith(".")]
    levels = {}
    for n in names:
        if n.startswith(cp.PREFIX):
            lv = cp.level(os.path.getsize(os.path.join(d, n)))
            levels[lv] = levels.get(lv, 0) + 1
    small = len(names) - sum(levels.values())
    return small <= N and all(c < cp.FANOUT for c in levels.values())


# ---------------------------------------------------------------- pure
def _names(*ranges, compacted=()):
    return ([f"c-{a:012d}-{b:012d}.parquet" for a, b in ranges]
            + [cp.compacted_name(a, b) for a, b in compacted])


def test_plan_closed_day_becomes_one_file():
    assert cp.plan(_names((1, 5), (6, 9))) == _names((1, 5), (6, 9))
    assert cp.plan(_names(compacted=[(1, 9)])) is None
    assert cp.plan(_names((1, 1))) == _names((1, 1))
    assert cp.plan(["other.parquet", *_names((1, 2))]) is None  # not the collector's: left alone


def test_plan_open_partition_merges_small_files_then_compacted_ones():
    small = [(i, i) for i in range(1, N + 1)]
    assert cp.plan(_names(*small), open_files=N) is None
    more = _names(*small, (9, 9), compacted=[(0, 0)])
    assert cp.plan(more, open_files=N) == _names(*small, (9, 9))  # the small files alone
    comp = _names(compacted=[(i, i) for i in range(cp.FANOUT)])
    big = _names(compacted=[(100 + i, 100 + i) for i in range(cp.FANOUT - 1)])
    sizes = {**{n: 10_000 for n in comp}, **{n: 10_000 * cp.FANOUT for n in big}}
    # FANOUT files of the lowest size level become one of the next level
    assert cp.plan(_names((50, 50)) + comp + big, open_files=N, sizes=sizes) == comp
    assert cp.plan(_names((50, 50)) + comp[1:] + big, open_files=N, sizes=sizes) is None
    assert cp.level(10_000 * cp.FANOUT) == cp.level(10_000) + 1


def test_first_open_day_is_after_the_grace():
    now = datetime(2026, 11, 3, 0, 30, tzinfo=timezone.utc)
    assert first_open_day(now, 3600) == "2026-11-02"
    assert first_open_day(now, 0) == "2026-11-03"
    assert first_open_day(now + timedelta(hours=1), 3600) == "2026-11-03"


def test_settings_are_validated():
    base = {"nats_url": "nats://127.0.0.1:4222", "db": "/tmp/x.duckdb", "archive": None}
    assert CollectorConfig(**base).compact_files == 64  # on by default
    assert CollectorConfig(**base, compact_files=0).compact_files == 0
    for bad in (-1, 100001, 2.5, True):
        with pytest.raises(CollectorError, match="--compact-files"):
            CollectorConfig(**base, compact_files=bad)
    with pytest.raises(CollectorError, match="--compact-grace"):
        CollectorConfig(**base, compact_grace=-1)


# ---------------------------------------------------------------- the archive writer, one pass per fetch
def _per_day(root, day):
    return {t: len(data_files(root, t, day)) for t in ("hook_runs", "script_runs")}


def test_many_fetches_into_one_day_stay_bounded_and_every_row_is_read_once(tmp_path):
    root = str(tmp_path / "archive")
    now = datetime.fromisoformat(DAY).replace(hour=12, tzinfo=timezone.utc)
    ac = AutoCompactor(root, open_files=N, grace_s=3600, clock=lambda: now)
    seq, expect, peak = 1, None, 0
    for batch in range(60):
        _write(root, DAY, batch, seq)
        if batch % 7 == 3:  # a redelivery: the same rows again, an overlapping range
            _write(root, DAY, batch, seq, shift=2)
        seq += 100
        ac.run_pass()
        counts = _per_day(root, DAY)
        peak = max(peak, *counts.values())
        assert max(counts.values()) <= BOUND, (batch, counts)
        assert all(_tiered(os.path.join(root, t, f"date={DAY}", "c1")) for t in counts)
        if batch % 10 == 9:
            got = keys(root)
            assert all(len(v) == len(set(v)) for v in got.values())  # never a row twice
            assert len(got["hook_runs"]) == (batch + 1) * len(NODES)  # never one missing
    expect = keys(root)
    assert ac.compacted > 0 and peak > N
    # the day closes: one file per partition, the same rows, nothing physically twice
    later = now + timedelta(days=1, hours=2)
    ac._clock = lambda: later
    ac.run_pass(closed=True)
    assert _per_day(root, DAY) == {"hook_runs": 1, "script_runs": 1}
    assert keys(root) == expect
    con = open_source(archive=root)
    try:
        n = con.execute("SELECT count(*) FROM read_parquet(?)",
                        [os.path.join(root, "hook_runs", f"date={DAY}", "c1", "*.parquet")]).fetchone()[0]
    finally:
        con.close()
    assert n == 60 * len(NODES)
    # late data after the day was compacted: a small file, folded in by the next pass
    _write(root, DAY, 7, 1 + 700, shift=1)
    assert keys(root) == expect
    ac.run_pass(closed=True)
    assert _per_day(root, DAY) == {"hook_runs": 1, "script_runs": 1}
    assert keys(root) == expect


def test_a_held_batch_is_left_alone(tmp_path):
    root = str(tmp_path / "archive")
    now = datetime.fromisoformat(DAY).replace(hour=12, tzinfo=timezone.utc)
    ac = AutoCompactor(root, open_files=1, clock=lambda: now)
    _write(root, DAY, 0, 1)
    _write(root, DAY, 1, 101)
    held = data_files(root, "hook_runs", DAY)[-1]
    ac.hold(held)
    ac.run_pass()
    assert held in data_files(root, "hook_runs", DAY)  # not merged: its commit has not succeeded
    ac.release(held)
    _write(root, DAY, 2, 201)
    ac.run_pass()
    assert len(data_files(root, "hook_runs", DAY)) == 1


def test_another_compaction_running_skips_the_pass(tmp_path):
    import fcntl
    root = str(tmp_path / "archive")
    now = datetime.fromisoformat(DAY).replace(hour=12, tzinfo=timezone.utc)
    ac = AutoCompactor(root, open_files=1, clock=lambda: now)
    for b in range(3):
        _write(root, DAY, b, 1 + 100 * b)
    with open(os.path.join(root, ".compact.lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        assert ac.run_pass() == []
    assert len(data_files(root, "hook_runs", DAY)) == 3
    assert len(ac.run_pass()) == 2 and len(data_files(root, "hook_runs", DAY)) == 1


# ---------------------------------------------------------------- kill -9 in an automatic merge
_KILLER = """
import os, signal, sys
from collector.compact import compact
step, nth = sys.argv[2], int(sys.argv[3])
seen = {}
def crash(name):
    seen[name] = seen.get(name, 0) + 1
    if name == step and seen[name] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
# what AutoCompactor.run_pass runs after a fetch (collector/autocompact.py)
compact(sys.argv[1], today=sys.argv[4], open_files=int(sys.argv[5]), closed=False, crash=crash)
"""


@pytest.mark.parametrize("step,nth", [("written", 1), ("renamed", 1), ("unlinked", 1),
                                      ("unlinked", 3), ("renamed", 2)])
def test_kill_9_in_an_open_partition_merge_leaves_every_row_once(tmp_path, step, nth):
    root = str(tmp_path / "archive")
    now = datetime.fromisoformat(DAY).replace(hour=12, tzinfo=timezone.utc)
    ac = AutoCompactor(root, open_files=N, clock=lambda: now)
    seq = 1
    for batch in range(N + 1):  # one merge done: a @compact file beside the next small files
        _write(root, DAY, batch, seq)
        seq += 100
    ac.run_pass()
    for batch in range(N + 1, 2 * N + 3):
        _write(root, DAY, batch, seq, shift=1 if batch == N + 2 else 0)
        seq += 100
    before = keys(root)
    p = subprocess.run([sys.executable, "-c", _KILLER, root, step, str(nth), DAY, str(N)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert keys(root) == before  # what readers see right after the kill
    ac.run_pass()  # the next pass finishes the job
    assert keys(root) == before
    assert max(_per_day(root, DAY).values()) <= BOUND
    ac.run_pass(closed=True)  # (still open: nothing more) ...
    ac._clock = lambda: now + timedelta(days=2)
    ac.run_pass(closed=True)  # ... until the day closes
    assert _per_day(root, DAY) == {"hook_runs": 1, "script_runs": 1}
    assert keys(root) == before
    hidden = [f for _d, _s, fs in os.walk(root) for f in fs if f.startswith(".@compact")]
    assert hidden == []


# ---------------------------------------------------------------- the real collector, real nats-server
@pytest.mark.slow
def test_the_collector_bounds_its_own_archive(nats_server, tmp_path):
    """Many small fetches (--batch 2) into today's partitions: the running
    collector merges them by itself (--compact-files 4), and every row is
    read from the archive exactly once, as it is stored in DuckDB."""
    from tests.collector.harness import counts, no_duplicates
    from tests.helpers.pipeline import publish, start_collect_process
    from tests.collector.test_collector_e2e import workload
    from tests.helpers import wait_for

    msgs, expect = workload(n_hooks=80, n_nodes=2)
    publish(nats_server.url, msgs)
    db, arch = tmp_path / "live.duckdb", tmp_path / "archive"
    # --ack-wait 120: no redelivery even on a loaded machine (each row is written once)
    p = start_collect_process(nats_server.url, db, arch,
                              extra=["--batch", "2", "--compact-files", str(N), "--ack-wait", "120"])
    tables = ("hook_runs", "script_runs", "journal")

    def files_per_day():
        out = {}
        for t in (*tables, "raw"):  # raw: the messages as received, compacted too
            for d, _s, fs in os.walk(arch / t):
                day = os.path.relpath(d, arch / t).split(os.sep)[0]
                if day.startswith("date=") and day != "date=1970-01-01":
                    n = sum(1 for f in fs if f.endswith(".parquet") and not f.startswith("."))
                    out[(t, day)] = out.get((t, day), 0) + n
        return out

    def archive_rows():
        try:
            con = open_source(archive=str(arch))
        except Exception:  # a file merged away between listing and reading: look again
            return None
        try:
            return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
        except Exception:
            return None
        finally:
            con.close()

    try:
        wait_for(lambda: archive_rows() == {t: expect[t] for t in tables}, timeout=180,
                 what=lambda: f"every row in the archive: {archive_rows()} vs {expect}")
        wait_for(lambda: files_per_day() and max(files_per_day().values()) <= BOUND, timeout=120,
                 what=lambda: f"<= {BOUND} files per (table, day): {files_per_day()}")
        merged = [f for _d, _s, fs in os.walk(arch) for f in fs if f.startswith(cp.PREFIX)]
        assert merged, "nothing was compacted"
        assert any(t == "raw" for t, _day in files_per_day())
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err.decode()[-2000:]
    assert counts(db)["hook_runs"] == expect["hook_runs"]
    no_duplicates(db)
    assert archive_rows() == {t: expect[t] for t in tables}
    # an engine reading the directory as-is, no dedup (pyarrow's defaults): no
    # message was redelivered, so every row is physically there once
    import pyarrow.parquet as pq
    assert {t: pq.read_table(str(arch / t)).num_rows for t in tables} == {t: expect[t] for t in tables}
    con = open_source(archive=str(arch))
    try:
        for t, k in (("hook_runs", "hook_id"), ("script_runs", "span_id")):
            assert con.execute(f"SELECT count(*) - count(DISTINCT {k}) FROM {t}").fetchone()[0] == 0
    finally:
        con.close()


def test_closing_stops_between_two_directories(tmp_path):
    root = str(tmp_path / "archive")
    for i, day in enumerate(("2026-11-01", "2026-11-02")):
        for b in range(2):
            _write(root, day, b, 1 + 1000 * i + 100 * b)
    before = keys(root)
    ac = AutoCompactor(root, clock=lambda: datetime(2026, 12, 1, tzinfo=timezone.utc))
    ac._stop.set()  # as close() does while a pass runs
    ac.run_pass(closed=True)
    per_dir = [_per_day(root, d) for d in ("2026-11-01", "2026-11-02")]
    assert sum(n == 1 for d in per_dir for n in d.values()) == 1  # one directory done, then stopped
    assert keys(root) == before


def test_a_bad_directory_is_reported_and_the_others_still_compacted(tmp_path, caplog):
    root = str(tmp_path / "archive")
    now = datetime.fromisoformat(DAY).replace(hour=12, tzinfo=timezone.utc)
    for b in range(3):
        _write(root, DAY, b, 1 + 100 * b)
    bad = os.path.join(root, "hook_runs", f"date={DAY}", "c1", "x-000000000900-000000000900.parquet")
    with open(bad, "wb") as fh:
        fh.write(b"not parquet")
    ac = AutoCompactor(root, open_files=1, clock=lambda: now)
    with caplog.at_level("WARNING", logger="hookscope.collector"):
        done = ac.run_pass()
        ac.run_pass()
    assert [r["table"] for r in done] == ["script_runs"]
    assert len([r for r in caplog.records if "cannot compact" in r.getMessage()]) == 1  # once
    assert bad in [os.path.join(os.path.dirname(bad), f) for f in data_files(root, "hook_runs", DAY)]


def test_open_partitions_merge_only_this_collectors_files(tmp_path):
    """Another collector sharing the archive may yet delete a batch file its
    store refused: its files wait for itself, or for the day to close."""
    from collector.archive import Archive
    from tests.collector.test_compact import _tables
    root = str(tmp_path / "archive")
    now = datetime.fromisoformat(DAY).replace(hour=12, tzinfo=timezone.utc)
    other = Archive(root, consumer="collector-b", fsync=False)
    for b in range(3):
        _write(root, DAY, b, 1 + 100 * b)  # consumer "collector"
        other.write({("c1", DAY): _tables(DAY, 10 + b, 5000 + 100 * b)}, 5000 + 100 * b, 5011 + 100 * b)
    other.close()
    before = keys(root)
    ac = AutoCompactor(root, open_files=1, clock=lambda: now, own="collector")
    ac.run_pass()
    names = data_files(root, "hook_runs", DAY)
    assert sum(n.startswith(cp.PREFIX) for n in names) == 1
    assert sum(n.startswith("collector-b-") for n in names) == 3
    assert not [n for n in names if n.startswith("collector-0")]
    assert keys(root) == before
    ac._clock = lambda: now + timedelta(days=2)
    ac.run_pass(closed=True)  # a closed day: everything, whoever wrote it
    assert _per_day(root, DAY) == {"hook_runs": 1, "script_runs": 1}
    assert keys(root) == before


def measure(fetches: int = 3000, open_files: int = 64) -> str:
    """The figure in docs/store.md "Automatic compaction": the archive writer
    alone, one pass after each fetch; run as
    ``.venv/bin/python -m tests.collector.test_autocompact 3000``."""
    import tempfile
    import time
    root = tempfile.mkdtemp() + "/archive"
    now = datetime.fromisoformat(DAY).replace(hour=12, tzinfo=timezone.utc)
    ac = AutoCompactor(root, open_files=open_files, clock=lambda: now)
    tw = tc = 0.0
    peak = rewritten = 0
    for b in range(fetches):
        t0 = time.perf_counter()
        _write(root, DAY, b, 1 + 100 * b)
        t1 = time.perf_counter()
        rewritten += sum(r["rows"] for r in ac.run_pass() if r["table"] == "hook_runs")
        tc += time.perf_counter() - t1
        tw += t1 - t0
        peak = max(peak, *_per_day(root, DAY).values())
    return (f"{fetches} fetches, N={open_files}: peak {peak} files per (table, day); "
            f"hook_runs rows rewritten per row {rewritten / (fetches * len(NODES)):.2f}; "
            f"passes {tc:.2f} s = {tc / tw:.2f}x the writes' {tw:.2f} s")


if __name__ == "__main__":
    print(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 3000))


def test_settings_resolve_from_the_config_file_and_name_a_bad_value(tmp_path):
    from collector.config import resolve_settings
    cfg = tmp_path / "hookscope.toml"
    cfg.write_text("[collector]\ncompact_files = 8\ncompact_grace = 60\n")
    s = resolve_settings(db=str(tmp_path / "x.duckdb"), config=str(cfg), env={})
    c = s.collector_config(nats_url="nats://127.0.0.1:4222")
    assert (c.compact_files, c.compact_grace) == (8, 60.0)
    assert resolve_settings(db=str(tmp_path / "x.duckdb"), compact_files=0, env={}).compact_files == 0
    cfg.write_text("[collector]\ncompact_files = -1\n")
    with pytest.raises(CollectorError, match="compact_files"):
        resolve_settings(db=str(tmp_path / "x.duckdb"), config=str(cfg), env={})


def test_compaction_counters_are_on_the_metrics_endpoint():
    from collector.metrics import Metrics
    from tests.collector.harness import metric_value

    m = Metrics()
    text = m.render()
    assert metric_value(text, "hookscope_collector_compactions_total") == 0
    m.inc("compacted_partitions", 3)
    m.inc("compact_errors")
    text = m.render()
    assert metric_value(text, "hookscope_collector_compactions_total") == 3
    assert 'hookscope_collector_errors_total{kind="compact_errors"} 1.0' in text

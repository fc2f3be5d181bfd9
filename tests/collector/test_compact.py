"""`hookscope compact`: one sorted file per closed (table, date, cluster)
partition, with readers seeing every key exactly once before, during (a kill
-9 at each step) and after compaction."""

import os
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from collector import compact as cp
from collector.archive import Archive, ArchiveError
from collector.columns import ARROW_SCHEMAS
from queries.source import open_source

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DAYS = ("2026-11-01", "2026-11-02", "2026-11-03")
TODAY = DAYS[-1]
NODES = [f"n{i:03d}" for i in range(12)]


def _tables(day, batch, seq0):
    t0 = datetime.fromisoformat(day).replace(tzinfo=timezone.utc)
    hooks, scripts = [], []
    for k, node in enumerate(reversed(NODES)):  # written in the wrong order on purpose
        hid = f"{day}-{batch}-{node}"
        ts = t0 + timedelta(minutes=batch, seconds=k)
        hooks.append({"hook_id": hid, "cluster": "c1", "node": node, "context": "prolog_slurmd",
                      "job_id": str(batch), "start_ts": ts, "stream_seq": seq0 + k})
        for i in range(2):
            scripts.append({"span_id": f"{hid}-{i}", "hook_id": hid, "cluster": "c1", "node": node,
                            "idx": i, "start_ts": ts, "exit_code": 0, "stream_seq": seq0 + k})
    return {"hook_runs": pa.Table.from_pylist(hooks, schema=ARROW_SCHEMAS["hook_runs"]),
            "script_runs": pa.Table.from_pylist(scripts, schema=ARROW_SCHEMAS["script_runs"])}


def _write(root, day, batch, seq0, shift=0):
    """One fetch's files; ``shift`` writes it again as a redelivery would
    (same rows, an overlapping sequence range in the name)."""
    a = Archive(root, fsync=False)
    try:
        a.write({("c1", day): _tables(day, batch, seq0)}, seq0 + shift, seq0 + len(NODES) - 1 + shift)
    finally:
        a.close()


@pytest.fixture
def archive(tmp_path):
    root = str(tmp_path / "archive")
    seq = 1
    for day in DAYS:
        for batch in range(5):
            _write(root, day, batch, seq)
            if batch == 2:
                _write(root, day, batch, seq, shift=3)
            seq += 100
    return root


def keys(root):
    con = open_source(archive=root)
    try:
        return {t: sorted(r[0] for r in con.execute(f"SELECT {k} FROM {t}").fetchall())
                for t, k in (("hook_runs", "hook_id"), ("script_runs", "span_id"))}
    finally:
        con.close()


def data_files(root, table, day):
    d = os.path.join(root, table, f"date={day}", "c1")
    return sorted(os.listdir(d))


def test_closed_days_become_one_sorted_file_with_the_same_rows(archive, monkeypatch):
    before = keys(archive)
    assert len(before["hook_runs"]) == len(set(before["hook_runs"])) == 5 * len(NODES) * len(DAYS)
    today_files = data_files(archive, "hook_runs", TODAY)
    monkeypatch.setattr(cp, "ROW_GROUP_ROWS", 8)
    done = cp.compact(archive, today=TODAY)
    assert {(r["table"], r["inputs"]) for r in done} == {("hook_runs", 6), ("script_runs", 6)}
    assert keys(archive) == before
    for table in ("hook_runs", "script_runs"):
        for day in DAYS[:-1]:
            (name,) = data_files(archive, table, day)
            assert name.startswith("@compact-000000000") and name.endswith(".parquet")
            f = pq.ParquetFile(os.path.join(archive, table, f"date={day}", "c1", name))
            tb = f.read()
            assert tb.schema.equals(ARROW_SCHEMAS[table])  # the archive's portable types
            assert tb.column("node").to_pylist() == sorted(tb.column("node").to_pylist())
            assert f.metadata.num_row_groups > 1
            # sorted by node: row groups' node ranges do not interleave (pruning works)
            ranges = [(f.metadata.row_group(i).column(tb.schema.get_field_index("node")).statistics.min,
                       f.metadata.row_group(i).column(tb.schema.get_field_index("node")).statistics.max)
                      for i in range(f.metadata.num_row_groups)]
            assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))
    assert data_files(archive, "hook_runs", TODAY) == today_files
    assert cp.compact(archive, today=TODAY) == []  # nothing left to do


def test_compacted_files_are_laid_out_for_pruning(archive, monkeypatch):
    """Sorted by (node, time), row groups of ROW_GROUP_ROWS, the sort order
    in the footer, and Bloom filters that rule out absent lookup values."""
    import duckdb

    monkeypatch.setattr(cp, "ROW_GROUP_ROWS", 8)
    cp.compact(archive, today=TODAY)
    con = duckdb.connect()
    for table in ("hook_runs", "script_runs"):
        (name,) = data_files(archive, table, DAYS[0])
        path = os.path.join(archive, table, f"date={DAYS[0]}", "c1", name)
        f = pq.ParquetFile(path)
        tb = f.read()
        pairs = list(zip(tb.column("node").to_pylist(), tb.column("start_ts").to_pylist()))
        assert pairs == sorted(pairs) and len(set(tb.column("node").to_pylist())) == len(NODES)
        sizes = [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)]
        assert max(sizes) == 8 and sum(sizes) == tb.num_rows
        names = tb.schema.names
        assert [names[c.column_index] for c in f.metadata.row_group(0).sorting_columns] == \
            [c for c in cp.SORT[table] if c in names]
        for col in cp.BLOOM[table]:
            assert f.metadata.row_group(0).column(names.index(col)).bloom_filter_offset > 0, col
        # a hook_id of the second row group: only groups that hold it may be read
        hid = tb.column("hook_id")[9].as_py()
        probe = dict(con.execute("SELECT row_group_id, bloom_filter_excludes FROM "
                                 "parquet_bloom_probe(?, 'hook_id', ?)", [path, hid]).fetchall())
        holds = {i // 8 for i, v in enumerate(tb.column("hook_id").to_pylist()) if v == hid}
        assert all(not probe[g] for g in holds)
        absent = con.execute("SELECT bool_and(bloom_filter_excludes) FROM "
                             "parquet_bloom_probe(?, 'hook_id', 'no-such-hook')", [path]).fetchone()[0]
        assert absent  # every group ruled out (deterministic: the same values hash alike each run)
        # time columns delta-encoded, the others still dictionary-encoded
        rg = f.metadata.row_group(0)
        enc = {rg.column(i).path_in_schema: set(rg.column(i).encodings) for i in range(rg.num_columns)}
        times = [fl.name for fl in tb.schema if str(fl.type).startswith("timestamp")]
        assert "start_ts" in times
        for col in times:
            assert cp.TIME_ENCODING in enc[col] and "RLE_DICTIONARY" not in enc[col], (col, enc[col])
        assert "RLE_DICTIONARY" in enc["node"] and "RLE_DICTIONARY" in enc["path" if table == "script_runs"
                                                                             else "context"]
        # DuckDB reads them back as pyarrow wrote them
        back = duckdb.connect().sql(f"SELECT {', '.join(times)} FROM read_parquet('{path}')").to_arrow_table()
        for col in times:
            assert back.column(col).cast(tb.schema.field(col).type).equals(tb.column(col)), col


def test_today_only_when_asked(archive):
    before = keys(archive)
    cp.compact(archive, today=TODAY, include_today=True)
    assert len(data_files(archive, "hook_runs", TODAY)) == 1
    assert keys(archive) == before


def test_redelivery_into_a_compacted_day_is_read_once_and_folded_in(archive):
    before = keys(archive)
    cp.compact(archive, today=TODAY)
    _write(archive, DAYS[0], 3, 1 + 300, shift=1)  # batch 3 of day 0 again
    assert len(data_files(archive, "hook_runs", DAYS[0])) == 2
    assert keys(archive) == before
    cp.compact(archive, today=TODAY)
    assert len(data_files(archive, "hook_runs", DAYS[0])) == 1
    assert keys(archive) == before


_KILLER = """
import os, signal, sys
from collector.compact import compact
step, nth = sys.argv[2], int(sys.argv[3])
seen = {}
def crash(name):
    seen[name] = seen.get(name, 0) + 1
    if name == step and seen[name] == nth:
        os.kill(os.getpid(), signal.SIGKILL)
compact(sys.argv[1], today=sys.argv[4], crash=crash)
"""


@pytest.mark.parametrize("step,nth", [("written", 1), ("renamed", 1), ("unlinked", 1),
                                      ("unlinked", 4), ("written", 3), ("renamed", 4)])
def test_kill_9_at_each_step_leaves_every_row_once(archive, step, nth):
    before = keys(archive)
    p = subprocess.run([sys.executable, "-c", _KILLER, archive, step, str(nth), TODAY],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert keys(archive) == before  # what readers see right after the kill
    cp.compact(archive, today=TODAY)  # a rerun finishes the job
    assert keys(archive) == before
    for table in ("hook_runs", "script_runs"):
        for day in DAYS[:-1]:
            assert len(data_files(archive, table, day)) == 1
    hidden = [f for _d, _s, fs in os.walk(archive) for f in fs if f.startswith(".@compact")]
    assert hidden == []


def test_a_second_compaction_is_refused_while_one_runs(archive):
    import fcntl
    with open(os.path.join(archive, ".compact.lock"), "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(ArchiveError, match="another compaction"):
            cp.compact(archive, today=TODAY)


def test_cli(archive, tmp_path):
    from collector.cli import compact
    before = keys(archive)
    r = CliRunner().invoke(compact, ["--archive", archive])
    assert r.exit_code == 0, r.output
    # the real today is later than DAYS: 2 tables x 3 days x 6 files
    assert "compacted 6 partitions, 36 files" in r.output
    assert keys(archive) == before
    r = CliRunner().invoke(compact, ["--archive", str(tmp_path / "nope")])
    assert r.exit_code != 0 and "does not exist" in r.output
    shutil.rmtree(archive)

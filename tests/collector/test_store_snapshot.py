"""The readers' snapshot split by time (collector/snapshot.py): every row in
exactly one part, a publication that cuts only what is new, restarts that go
on, and the storage contract read through the published catalog.  Real DuckDB
files, no NATS; no assertion on speed (the cost bound is checked by counting
the rows a publication cuts)."""

import os

import duckdb
import pyarrow as pa
import pytest
from tests.collector.test_collector_store import StorageContract, make_batch

from collector import schema
from collector import snapshot as S
from collector.columns import NAMES
from collector.store import Store


def live_keys(db, table):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return sorted(con.execute(f"SELECT {', '.join(schema.KEYS[table])} FROM {table}").fetchall())
    finally:
        con.close()


def catalog_keys(db, table):
    con = duckdb.connect(schema.snapshot_path(str(db)), read_only=True)
    try:
        return sorted(con.execute(f"SELECT {', '.join(schema.KEYS[table])} FROM {table}").fetchall())
    finally:
        con.close()


def fill(st, n_batches, first=1):
    """Commit n_batches batches, publishing after each; the last stream seq."""
    seq = first
    for _ in range(n_batches):
        b, _ = make_batch(first_seq=seq)
        st.commit(b.arrow()[1], b.last_seq)
        st.snapshot()
        seq = b.last_seq + 1
    return seq


TABLES = ("hook_runs", "script_runs", "span_events", "gpu_samples", "journal", "dead_letters")


def hot_rows(st):
    """Rows in the current hot part (what the last publication re-cut)."""
    con = duckdb.connect(":memory:")
    n = 0
    for t in S.DATA:
        n += con.execute("SELECT count(*) FROM read_parquet(?)",
                         [os.path.join(st._split.dir, st._split._hot[t])]).fetchone()[0]
    return n


def test_every_row_once_across_sealed_and_hot_parts(tmp_path):
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0, seal_rows=40) as st:
        fill(st, 6)
        sealed = [p for p in st._split.parts]
        assert len(sealed) >= 3  # several seals happened
        # the ranges are contiguous: each part starts where the last ended
        for a, b in zip(sealed, sealed[1:]):
            assert a["hi"] == b["lo"]
        for t in TABLES:
            assert catalog_keys(db, t) == live_keys_open(st, t), t
        # the catalog is whole in its one file: no WAL beside it holds views
        assert not os.path.exists(schema.snapshot_path(str(db)) + ".wal")
        # a publication re-cuts at most seal_rows rows, whatever the history
        assert hot_rows(st) <= 40 + 60  # one batch (< 60 rows) on top of the bound


def live_keys_open(st, table):
    return sorted(st.con.execute(f"SELECT {', '.join(schema.KEYS[table])} FROM {table}").fetchall())


def test_hot_part_stays_bounded_as_history_grows(tmp_path):
    """The cost of a publication: rows it cuts.  It stays under the bound on
    the 2nd and the 20th batch alike (the old design copied everything)."""
    db = tmp_path / "s.duckdb"
    cuts = []
    with Store(db, snapshot_interval=0, seal_rows=100) as st:
        seq = 1
        for _ in range(20):
            seq = fill(st, 1, seq)
            cuts.append(hot_rows(st))
        total = sum(st.counts()[t] for t in S.DATA)
    assert total > 10 * 100
    assert max(cuts) <= 100 + 60


def test_day_change_seals_and_merges_the_day(tmp_path, monkeypatch):
    day = ["2026-12-01"]
    monkeypatch.setattr(S, "_utc_day", lambda: day[0])
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0, seal_rows=30) as st:
        seq = fill(st, 4)
        assert len([p for p in st._split.parts if p["day"] == "2026-12-01"]) >= 2
        day[0] = "2026-12-02"
        seq = fill(st, 2, seq)
        days = [p["day"] for p in st._split.parts]
        assert days.count("2026-12-01") == 1  # the closed day is one part
        for t in TABLES:
            assert catalog_keys(db, t) == live_keys_open(st, t), t


def test_restart_goes_on_from_the_state(tmp_path):
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0, seal_rows=30) as st:
        seq = fill(st, 3)
        names = [p["name"] for p in st._split.parts]
    assert names
    with Store(db, snapshot_interval=0, seal_rows=30) as st:
        assert st.maybe_snapshot(idle=True)  # a previous catalog: published at once
        assert [p["name"] for p in st._split.parts][:len(names)] == names  # not cut again
        fill(st, 2, seq)
        for t in TABLES:
            assert catalog_keys(db, t) == live_keys_open(st, t), t


def test_another_file_at_the_path_starts_again(tmp_path):
    """A rebuild renames a new file over --db: the old parts are not its rows."""
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0, seal_rows=30) as st:
        fill(st, 3)
    other = tmp_path / "o.duckdb"
    with Store(other, snapshot_interval=0) as st:
        fill(st, 1, 500)
    os.replace(other, db)
    with Store(db, snapshot_interval=0, seal_rows=30) as st:
        st.snapshot()
        for t in TABLES:
            assert catalog_keys(db, t) == live_keys_open(st, t), t
        assert st.counts()["hook_runs"] == 6


def test_a_refused_batch_leaves_rowids_dense(tmp_path):
    """The cut rests on rowids 0..count-1: a rolled-back commit must not leave a gap."""
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0, seal_rows=10) as st:
        seq = fill(st, 1)
        b, _ = make_batch(first_seq=seq)
        tables = b.arrow()[1]
        bad = tables["hook_runs"].set_column(NAMES["hook_runs"].index("trace_id"), "trace_id",
                                             pa.array([None] * tables["hook_runs"].num_rows, pa.string()))
        with pytest.raises(duckdb.Error):
            st.commit(dict(tables, hook_runs=bad), b.last_seq)
        fill(st, 2, seq)
        for t in S.DATA:
            n, top = st.con.execute(f"SELECT count(*), coalesce(max(rowid) + 1, 0) FROM {t}").fetchone()
            assert n == top, t
        for t in TABLES:
            assert catalog_keys(db, t) == live_keys_open(st, t), t


def test_a_reader_of_the_previous_catalog_keeps_reading(tmp_path):
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0, seal_rows=30) as st:
        seq = fill(st, 1)
        old = duckdb.connect(schema.snapshot_path(str(db)), read_only=True)
        n = old.execute("SELECT count(*) FROM hook_runs").fetchone()[0]
        fill(st, 3, seq)  # seals, new hot parts, a new catalog
        assert old.execute("SELECT count(*) FROM hook_runs").fetchone()[0] == n
        old.close()


def test_unreferenced_parts_are_deleted_after_the_grace(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "GRACE_S", 0.0)
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0, seal_rows=30) as st:
        st._split = None
        fill(st, 5)
        st._split.grace_s = 0.0
        st.snapshot()
        hot = {f for f in st._split.files() if f.startswith("h-")}
        assert hot == set(st._split._hot.values())  # only the current hot part is left
        assert set(st._split.files()) == st._split._referenced()


def test_ingest_state_is_read_once(tmp_path):
    db = tmp_path / "s.duckdb"
    with Store(db, consumer="c1", snapshot_interval=0, seal_rows=10) as st:
        seq = fill(st, 3)
        con = duckdb.connect(schema.snapshot_path(str(db)), read_only=True)
        assert con.execute("SELECT consumer, last_seq FROM ingest_state").fetchall() == [("c1", seq - 1)]
        con.close()


class TestSplitSnapshot(StorageContract):
    """The storage contract, read through the published catalog."""

    def write(self, tmp_path, batch):
        _, tables = batch.arrow()
        with Store(tmp_path / "s.duckdb", consumer=batch.consumer, snapshot_interval=0, seal_rows=5) as st:
            st.commit(tables, batch.last_seq)
            st.snapshot()

    def read(self, tmp_path, table):
        con = duckdb.connect(schema.snapshot_path(str(tmp_path / "s.duckdb")), read_only=True)
        try:
            return con.execute(f"SELECT {', '.join(NAMES[table])} FROM {table} ORDER BY ALL").fetchall()
        finally:
            con.close()


def test_parts_from_before_a_column_was_added_still_read(tmp_path):
    """A store grown by a column (schema.ADDED_COLUMNS on a later start):
    older parts lack it, and the catalog reads them with it NULL."""
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0, seal_rows=10) as st:
        seq = fill(st, 2)
    con = duckdb.connect(str(db))
    con.execute("ALTER TABLE hook_runs ADD COLUMN later_col INTEGER")
    con.close()
    with Store(db, snapshot_interval=0, seal_rows=10) as st:
        fill(st, 2, seq)
        snap = duckdb.connect(schema.snapshot_path(str(db)), read_only=True)
        assert snap.execute("SELECT count(*), count(later_col) FROM hook_runs").fetchone() == (24, 0)
        snap.close()
        for t in TABLES:
            assert catalog_keys(db, t) == live_keys_open(st, t), t


def test_parts_of_a_day_stay_few_however_many_seals(tmp_path):
    """Size-tiered: FANOUT parts of one level become one of the next, so a
    busy day (a seal every publication here) keeps a handful of parts."""
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0, seal_rows=1) as st:
        seq = fill(st, 1)
        st._split.fanout = 3
        most = 0
        for _ in range(20):
            seq = fill(st, 1, seq)
            levels = [p["level"] for p in st._split.parts]
            assert all(levels.count(lv) < 3 for lv in set(levels))  # merged at 3
            most = max(most, len(levels))
        assert max(levels) >= 2  # merges cascaded
        assert most <= 3 * 3
        for a, b in zip(st._split.parts, st._split.parts[1:]):
            assert a["hi"] == b["lo"]
        for t in TABLES:
            assert catalog_keys(db, t) == live_keys_open(st, t), t


def test_a_failed_publication_is_a_store_error_not_a_refused_row(tmp_path, monkeypatch):
    """The consumer splits a batch and dead-letters rows on DuckDB's
    'refused' errors: a snapshot failure (after the commit) must never look
    like one."""
    from collector.consumer_errors import _is_data_error
    from collector.store import StoreError
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0) as st:
        seq = fill(st, 1)

        def broken(*a, **k):
            raise duckdb.InvalidInputException("simulated: cannot write the part")
        monkeypatch.setattr(st._split, "_write_catalog", broken)
        b, _ = make_batch(first_seq=seq)
        st.commit(b.arrow()[1], b.last_seq)
        with pytest.raises(StoreError, match="cannot publish the snapshot") as err:
            st.snapshot()
        assert not _is_data_error(err.value)
        monkeypatch.undo()
        st.snapshot()  # the next publication catches up
        for t in TABLES:
            assert catalog_keys(db, t) == live_keys_open(st, t), t


def test_rows_deleted_by_hand_make_the_snapshot_start_again(tmp_path):
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0, seal_rows=10) as st:
        fill(st, 3)
        st.con.execute("DELETE FROM script_runs")  # never done by the collector
        st.con.execute("DELETE FROM hook_runs")
        st.snapshot()
        for t in TABLES:
            assert catalog_keys(db, t) == live_keys_open(st, t), t


def test_a_row_deleted_while_stopped_makes_the_next_start_cut_again(tmp_path):
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0, seal_rows=10) as st:
        seq = fill(st, 3)
    con = duckdb.connect(str(db))
    con.execute("DELETE FROM script_runs WHERE rowid = 3")
    con.close()
    with Store(db, snapshot_interval=0, seal_rows=10) as st:
        fill(st, 1, seq)
        for t in TABLES:
            assert catalog_keys(db, t) == live_keys_open(st, t), t


def test_a_closed_month_becomes_one_part(tmp_path, monkeypatch):
    """Merged in the background from the days' files, then swapped in at a
    later publication: readers see every row once before, during and after."""
    from tests.helpers import wait_for
    day = ["2026-11-28"]
    monkeypatch.setattr(S, "_utc_day", lambda: day[0])
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0, seal_rows=30) as st:
        seq = fill(st, 2)
        for d in ("2026-11-29", "2026-11-30"):
            day[0] = d
            seq = fill(st, 2, seq)
        assert len([p for p in st._split.parts if p["day"].startswith("2026-11")]) >= 2
        day[0] = "2026-12-01"

        def merged():
            nonlocal seq
            seq = fill(st, 1, seq)  # publications start the merge and pick its result up
            for t in TABLES:  # every row once, before and after the swap
                assert catalog_keys(db, t) == live_keys_open(st, t), t
            return [p["day"] for p in st._split.parts if p["day"].startswith("2026-11")] == ["2026-11"]
        wait_for(merged, 60, what="the November parts merged")
        assert sum(p["rows"]["hook_runs"] for p in st._split.parts) == st.counts()["hook_runs"]
        for t in TABLES:
            assert catalog_keys(db, t) == live_keys_open(st, t), t
    with Store(db, snapshot_interval=0, seal_rows=30) as st:  # the state holds the month part
        st.snapshot()
        assert [p["day"] for p in st._split.parts][0] == "2026-11"
        for t in TABLES:
            assert catalog_keys(db, t) == live_keys_open(st, t), t


def test_a_slow_publication_stretches_the_interval_only_until_a_fast_one(tmp_path, monkeypatch):
    """The interval grows to 5x a slow publication's time (a slow disk is not
    stalled by the writer) and returns to the asked-for interval after a fast
    one: one slow day-close re-cut must not leave readers staler for good."""
    import types

    import collector.store as store_mod
    clock = {"now": 1000.0, "publish_takes": 0.0}

    def monotonic():
        return clock["now"]
    monkeypatch.setattr(store_mod, "time", types.SimpleNamespace(monotonic=monotonic,
                                                                perf_counter=store_mod.time.perf_counter))
    db = tmp_path / "s.duckdb"
    with Store(db, snapshot_interval=0.5) as st:
        seq = fill(st, 1)
        real = st._split.publish

        def publish():
            real()
            clock["now"] += clock["publish_takes"]
        monkeypatch.setattr(st._split, "publish", publish)

        def commit_and_publish(takes):
            nonlocal seq
            b, _ = make_batch(first_seq=seq)
            st.commit(b.arrow()[1], b.last_seq)
            seq = b.last_seq + 1
            clock["publish_takes"] = takes
            st.snapshot()
            return st.snapshot_interval

        assert commit_and_publish(0.01) == 0.5
        assert commit_and_publish(3.0) == pytest.approx(15.0)  # a slow disk: 5x
        clock["now"] += 10.0
        b, _ = make_batch(first_seq=seq)
        st.commit(b.arrow()[1], b.last_seq)
        seq = b.last_seq + 1
        assert st.maybe_snapshot() is False  # 10 s < 15 s: not yet due
        assert commit_and_publish(0.02) == 0.5  # fast again: back to what was asked
        assert st.base_snapshot_interval == 0.5

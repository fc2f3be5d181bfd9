"""Bounded dedup (collector.dedup, issue 14): no key index, still exact.

Every table, through the real Store.commit: a redelivered batch, a key twice
within one batch, a backlog batch spanning weeks; the pure helpers; the
migration of a version-1 store (PRIMARY KEYs) at open, and its crash safety."""

import json

import duckdb
import pyarrow as pa
import pytest

from collector import dedup, migrate, schema
from collector.columns import NAMES, to_arrow
from collector.store import Store, StoreError

HOUR = 3_600_000_000_000
DAY = 24 * HOUR
T = 1_767_225_600_000_000_000  # 2026-01-01, ns
TABLES = list(dedup.TIME)


def row(table, i, ts_ns, seq):
    """A row of ``table`` in schema column order: key from ``i``, time ``ts_ns``."""
    vals = []
    for c in NAMES[table]:
        if c in ("hook_id", "span_id", "event_id"):
            v = f"{table[:2]}{i:014d}"
        elif c in ("cluster", "node", "context", "path", "name", "kind", "hash", "prev", "reason", "subject"):
            v = f"{c}-{i % 3}" if c in ("node", "name") and table != "journal" else c
        elif c == "chain":
            v = f"chain{i}"
        elif c in ("trace_id",):
            v = "t" * 32
        elif c == "record":
            v = json.dumps({"seq": i, "ts": ts_ns, "kind": "node_event", "nested": {"ts": 1}}, sort_keys=True)
        elif c == "stream_seq":
            v = i if table == "dead_letters" else seq
        elif c == "seq":
            v = i
        elif c in ("ts", "start_ts", "received_ts"):
            v = ts_ns if table != "dead_letters" else ts_ns
        elif c in ("idx", "gpu_index"):
            v = i % 2
        elif c == "attributes":
            v = "{}"
        elif c == "payload":
            v = b"x"
        else:
            v = None
        vals.append(v)
    return tuple(vals)


def batch(table, items):
    """{table: Arrow} from [(i, ts_ns, seq)]."""
    return {table: to_arrow(table, [row(table, i, ts, seq) for i, ts, seq in items])}


def stored(st, table):
    keys = ", ".join(f"epoch_us({k})" if k == "ts" else k for k in schema.KEYS[table])
    return st.con.execute(f"SELECT {keys} FROM {table} ORDER BY ALL").fetchall()


def keys_of(table, items):
    cols = NAMES[table]
    idx = [cols.index(k) for k in schema.KEYS[table]]
    ts_at = cols.index("ts") if "ts" in cols else None
    return {tuple(v // 1000 if j == ts_at else v for j, v in ((j, row(table, i, ts, 0)[j]) for j in idx))
            for i, ts, _ in items}


@pytest.mark.parametrize("table", TABLES)
def test_every_table_stores_each_key_once(tmp_path, table):
    first = [(i, T + i * 10**9, 1) for i in range(100)]           # an hour's rows
    inside = [(i, T + HOUR + i * 1000, 2) for i in range(100, 150)]       # twice in one batch
    backlog = ([(i, T - 21 * DAY + i * 10**9, 3) for i in range(150, 200)]  # an agent back after 3 weeks
               + [(i, T + i * 10**9, 3) for i in range(0, 10)]    # ... resending stored rows
               + [(i, T + DAY + i * 1000, 3) for i in range(200, 210)])   # ... and today's
    with Store(tmp_path / "s.duckdb", consumer="t") as st:
        st.commit(batch(table, first), 1)
        st.commit(batch(table, first), 1)  # redelivered: same rows, same seqs
        assert len(stored(st, table)) == 100
        twice = batch(table, inside + [(i, ts, 7) for i, ts, _ in inside])
        st.commit(twice, 7)
        if "stream_seq" in NAMES[table] and table != "dead_letters":  # the lowest sequence wins
            assert st.con.execute(f"SELECT max(stream_seq) FROM {table}").fetchone()[0] == 2
        tb = batch(table, backlog)[table]
        # weeks apart: probed as separate ranges, not one scan over three weeks
        # (dead_letters: bounded by stream_seq, its key, here all close)
        x = dedup.first_per_key(tb, schema.KEYS[table])
        x = dedup.with_journal_ts(st.con, x) if table == "journal" else x
        assert table == "dead_letters" or len(dedup.statements(table, x, NAMES[table])) >= 2
        st.commit({table: tb}, 8)
        st.commit({table: tb}, 8)  # and redelivered
        want = keys_of(table, first + inside + backlog)
        got = stored(st, table)
        assert len(got) == len(want) == 210 and set(got) == want
        # the rowids stay dense (the readers' snapshot cuts by rowid)
        assert st.con.execute(f"SELECT count(*), max(rowid) + 1 FROM {table}").fetchone() == (210, 210)


def test_journal_ts_is_the_records_and_bounds_the_dedup(tmp_path):
    items = [(i, T + i * 1999, 1) for i in range(5)]
    with Store(tmp_path / "s.duckdb") as st:
        st.commit(batch("journal", items), 1)
        got = st.con.execute("SELECT seq, epoch_us(ts) FROM journal ORDER BY seq").fetchall()
        assert got == [(i, (T + i * 1999) // 1000) for i in range(5)]  # top-level ts, truncated to us
        sql = f"SELECT epoch_us({dedup.JOURNAL_TS_SQL}) FROM journal ORDER BY seq"
        st.con.execute("SET TimeZone = 'America/New_York'")  # the SQL form is the same, whatever the zone
        assert [r[0] for r in st.con.execute(sql).fetchall()] == [g[1] for g in got]


def test_a_script_run_split_across_messages_is_stored_once(tmp_path):
    """From the message with only script_ended, start = end - duration (or
    end): a later copy's start differs from the first's, within SLACK."""
    with Store(tmp_path / "s.duckdb") as st:
        st.commit(batch("script_runs", [(1, T, 1)]), 1)
        st.commit(batch("script_runs", [(1, T + 5 * HOUR, 2)]), 2)
        assert st.con.execute("SELECT stream_seq FROM script_runs").fetchall() == [(1,)]


def test_time_ranges_split_far_apart_times():
    us = pa.array([5, 1, 3, 100, 102, None, 1000], pa.int64())
    assert dedup.time_ranges(us, gap=10) == [(1, 5), (100, 102), (1000, 1000)]
    assert dedup.time_ranges(us, gap=2000) == [(1, 1000)]
    assert dedup.time_ranges(us, gap=10, max_ranges=2) == [(1, 102), (1000, 1000)]  # the largest gap kept
    assert dedup.time_ranges(pa.array([None], pa.int64()), gap=1) == []
    ts = pa.array([0, 7_200_000_000], pa.timestamp("us", tz="UTC"))
    assert dedup.time_ranges(ts, gap=dedup.DEFAULT_GAP) == [(0, 0), (7_200_000_000, 7_200_000_000)]


def test_first_per_key_keeps_the_lowest_sequence_in_batch_order():
    tb = pa.table({"k": ["a", "b", "a", "c", "b"], "stream_seq": [5, 2, 3, 1, 2], "v": [1, 2, 3, 4, 5]})
    out = dedup.first_per_key(tb, ["k"])
    assert sorted(zip(out["k"].to_pylist(), out["v"].to_pylist())) == [("a", 3), ("b", 2), ("c", 4)]
    plain = pa.table({"k": ["x", "y"], "v": [1, 2]})
    assert dedup.first_per_key(plain, ["k"]) is plain  # nothing repeated: untouched
    nos = pa.table({"k": ["x", "y", "x"], "v": [1, 2, 3]})
    assert dedup.first_per_key(nos, ["k"])["v"].to_pylist() == [1, 2]  # first in batch order


# ------------------------------------------------------------ migration
def make_v1(path, n=20):
    """A version-1 store: every table keyed (PRIMARY KEY), no journal.ts, rows in it."""
    con = duckdb.connect(str(path))
    for t, body in schema.TABLES.items():
        key = "" if t == "ingest_state" else f"\n, PRIMARY KEY ({', '.join(schema.KEYS[t])})"
        con.execute(f"CREATE TABLE {t} ({body}{key})")
    for t in TABLES:
        tb = batch(t, [(i, T + i * 10**9, 1) for i in range(n)])[t]
        con.register("b", tb)
        con.execute(f"INSERT INTO {t} ({', '.join(NAMES[t])}) SELECT * FROM b")
        con.unregister("b")
    con.execute("INSERT INTO ingest_state VALUES ('t', 1, now())")
    con.close()


def constraints(con):
    return {r[0] for r in con.execute("SELECT table_name FROM duckdb_constraints() "
                                      "WHERE constraint_type = 'PRIMARY KEY'").fetchall()}


def test_a_version_1_store_is_migrated_at_open(tmp_path):
    db = tmp_path / "s.duckdb"
    make_v1(db)
    con = duckdb.connect(str(db))
    before = {t: con.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in TABLES}
    con.close()
    with Store(db, consumer="t", snapshot_interval=0) as st:
        assert constraints(st.con) == {"ingest_state"}
        for t in TABLES:  # every row, in the same (rowid) order
            cols = ", ".join(NAMES[t])
            assert st.con.execute(f"SELECT {cols} FROM {t} ORDER BY rowid").fetchall() == before[t], t
        assert st.con.execute("SELECT count(*), count(ts) FROM journal WHERE epoch_us(ts) "
                              "= CAST(record->>'$.ts' AS BIGINT) // 1000").fetchone() == (20, 20)
        assert st.last_seq() == 1
        for t in TABLES:  # and the dedup holds against the migrated rows
            st.commit(batch(t, [(i, T + i * 10**9, 2) for i in range(25)]), 2)
            assert len(stored(st, t)) == 25, t
        snap = st.snapshot()
    con = duckdb.connect(snap, read_only=True)
    assert all(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 25 for t in TABLES)
    con.close()


def test_a_migration_killed_midway_leaves_version_1_and_runs_again(tmp_path, monkeypatch):
    db = tmp_path / "s.duckdb"
    make_v1(db)
    real = migrate._recreate
    done = []

    def dies(con, table, *rest):
        if len(done) == 3:
            raise duckdb.IOException("simulated: disk full while copying")
        done.append(table)
        real(con, table, *rest)

    monkeypatch.setattr(migrate, "_recreate", dies)
    with pytest.raises(StoreError, match="nothing was changed"):
        Store(db)
    con = duckdb.connect(str(db))
    assert constraints(con) == set(schema.TABLES)  # all of version 1 still there
    assert all(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 20 for t in TABLES)
    con.close()
    monkeypatch.setattr(migrate, "_recreate", real)
    with Store(db) as st:
        assert constraints(st.con) == {"ingest_state"}
        assert all(st.counts()[t] == 20 for t in TABLES)


def test_the_snapshot_is_cut_again_after_a_migration(tmp_path):
    """Parts cut from the old tables' rowids are not trusted after a
    migration: the next publication cuts every row again, each once."""
    db = tmp_path / "s.duckdb"
    with Store(db, consumer="t", snapshot_interval=0, seal_rows=10) as st:
        for k in range(3):
            st.commit(batch("hook_runs", [(k * 10 + i, T + i, k + 1) for i in range(10)]), k + 1)
            st.snapshot()
    con = duckdb.connect(str(db))  # make it a version-1 store again, rows in a new order
    con.execute("CREATE TABLE h1 AS SELECT * FROM hook_runs ORDER BY hook_id DESC")
    con.execute("DROP TABLE hook_runs")
    con.execute(f"CREATE TABLE hook_runs ({schema.TABLES['hook_runs']}\n, PRIMARY KEY (hook_id))")
    con.execute("INSERT INTO hook_runs SELECT * FROM h1")  # same counts: only a re-cut gets it right
    con.execute("DROP TABLE h1")
    con.close()
    with Store(db, consumer="t", snapshot_interval=0, seal_rows=10) as st:
        st.commit(batch("hook_runs", [(100 + i, T + i, 9) for i in range(5)]), 9)
        snap = st.snapshot()
        live = sorted(st.con.execute("SELECT hook_id FROM hook_runs").fetchall())
    con = duckdb.connect(snap, read_only=True)
    assert sorted(con.execute("SELECT hook_id FROM hook_runs").fetchall()) == live
    con.close()


def test_rows_without_a_time_are_still_stored_once(tmp_path):
    """Never from the decoder (its time columns are NOT NULL), but a journal
    record without a ts gets a NULL journal.ts: probed against every row."""
    rows = [row("journal", i, T, 1) for i in range(3)]
    rows[1] = rows[1][:8] + ('{"kind": "node_event", "seq": 1}',) + rows[1][9:]
    tb = to_arrow("journal", rows)
    with Store(tmp_path / "s.duckdb") as st:
        for _ in range(2):
            st.commit({"journal": tb}, 1)
        assert st.con.execute("SELECT count(*), count(ts) FROM journal").fetchone() == (3, 2)


def test_the_probe_reads_the_batch_s_time_range_not_history(tmp_path):
    """The point of the time bound: DuckDB skips row groups by their min/max,
    so a batch of today's rows (and a backlog batch: one range per far-apart
    time) reads a couple of row groups out of 20 days' worth."""
    import re

    con = duckdb.connect(str(tmp_path / "p.duckdb"))
    schema.create_all(con)
    # 20 days of span_events, a day per row group (122,880 rows), in time
    # order; every row group holds the batch's ids, names and idx values, so
    # only the time bound can prune (DuckDB also prunes by the batch's key
    # min/max when it can)
    con.execute(f"""INSERT INTO span_events (span_id, ts, name, idx)
        SELECT 'sp' || lpad((r % 100)::VARCHAR, 14, '0'), to_timestamp({T // 10**9})
               + to_microseconds((r * 703125)::BIGINT), 'name-' || (r % 3), r % 2
        FROM range(20 * 122880) t(r)""")
    con.execute("CHECKPOINT")
    last = T + 19 * DAY + 12 * HOUR
    for items, at_most in (([(i, last + i * 1000, 1) for i in range(50)], 2),
                           ([(i, last + i * 1000, 1) for i in range(50)]
                            + [(i, T + 3 * DAY + i * 1000, 1) for i in range(50, 60)], 4)):
        tb = batch("span_events", items)["span_events"]
        con.register("_hs_batch", tb)
        scanned = 0
        for sql in dedup.statements("span_events", tb, NAMES["span_events"]):
            probe = "SELECT count(*) FROM _hs_batch x WHERE " + sql.split(" FROM _hs_batch x WHERE ", 1)[1]
            plan = "\n".join(r[1] for r in con.execute("EXPLAIN ANALYZE " + probe).fetchall())
            got = re.findall(r"Row Groups Scanned: (\d+) / (\d+)", plan)
            assert got and int(got[0][1]) >= 20, plan
            scanned += int(got[0][0])
        assert 1 <= scanned <= at_most
        con.unregister("_hs_batch")
    con.close()


def test_journal_ts_derived_off_the_writer_is_kept_any_other_is_derived_again(tmp_path):
    """build_batch derives journal.ts on the event loop's thread
    (dedup.journal_ts, marked in the schema metadata) so that the writer does
    not; a ts column without that mark is derived again from the records."""
    items = [(i, T + i * 10**9, 1) for i in range(5)]
    tb = batch("journal", items)["journal"]
    derived = dedup.journal_ts(tb)
    assert derived.schema.metadata[dedup.DERIVED] == b"1"
    assert derived.column("ts").cast(pa.int64()).to_pylist() == [(T + i * 10**9) // 1000 for i in range(5)]
    # the same function the writer would run, on another connection: the same column
    assert dedup.with_journal_ts(duckdb.connect(), tb).column("ts").equals(derived.column("ts"))
    wrong = derived.set_column(derived.schema.get_field_index("ts"), "ts",
                               pa.array([0] * 5, pa.int64()).cast(pa.timestamp("us", tz="UTC")))
    with Store(tmp_path / "a.duckdb", consumer="t") as st:
        st.commit({"journal": wrong.replace_schema_metadata(None)}, 1)  # unmarked: derived again
        got = [r[0] for r in st.con.execute("SELECT epoch_us(ts) FROM journal ORDER BY seq").fetchall()]
    assert got == [(T + i * 10**9) // 1000 for i in range(5)]
    with Store(tmp_path / "b.duckdb", consumer="t") as st:
        st.commit({"journal": wrong}, 1)  # marked: kept as given (the writer did not parse)
        got = [r[0] for r in st.con.execute("SELECT epoch_us(ts) FROM journal ORDER BY seq").fetchall()]
    assert got == [0] * 5


def test_build_batch_hands_the_writer_a_derived_journal_ts():
    import time as _time

    from collector.fetched import build_batch
    from emitter import contract as C
    from tests.bench.collector_stages import _FakeMsg
    from tests.collector.gen import Node, hook_message

    node = Node("n1")
    msgs = [_FakeMsg(s, p, i + 1, _time.time_ns())
            for i, (s, _, p, _) in enumerate(hook_message(node, job_id=str(j)) for j in range(3))]
    _b, (_parts, store) = build_batch(msgs, "t", False, C.MAX_MESSAGE_BYTES)
    j = store["journal"]
    assert j.schema.metadata[dedup.DERIVED] == b"1"
    assert j.column("ts").equals(dedup.with_journal_ts(duckdb.connect(), j.drop_columns(["ts"])).column("ts"))
    assert j.column("ts").null_count == 0

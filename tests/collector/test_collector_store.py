"""The storage contract, run against every backend (live DuckDB file, Parquet
archive), plus the store's error paths.  Real DuckDB files, no NATS."""

import os
import subprocess
import sys
import time

import duckdb
import pytest

from collector import archive as A
from collector import schema
from collector.columns import NAMES, Batch
from collector.consumer import parse_reply
from collector.decode import decode_message
from collector.rebuild import from_archive
from collector.store import Store, StoreError
from emitter import contract as C
from emitter import otlp
from tests.collector.gen import Node, gpu_message, hook_message

NOW = time.time_ns()


def make_batch(first_seq=1, n=6, dup_of=None, consumer="t1"):
    node = Node("store01")
    b = Batch(consumer)
    items = []
    for i in range(n):
        subj, mid, payload, _ = hook_message(node, fail_index=1 if i == 0 else None)
        items.append((subj, mid, payload))
    subj, mid, payload, _ = gpu_message(node)
    items.append((subj, mid, payload))
    items.append((C.subject(C.SIGNAL_SPANS, "gpu1", "store01"), None, b"\xff\x00junk"))
    for k, (subj, mid, payload) in enumerate(dup_of or items):
        seq = first_seq + k
        b.add(decode_message(payload, subj, seq, NOW), seq, subj, NOW, payload, mid, "gpu1")
    return b, items


class StorageContract:
    """What every backend must do with batches: store exactly once per key."""

    def write(self, tmp_path, batch):
        raise NotImplementedError

    def read(self, tmp_path, table):
        raise NotImplementedError

    def test_rows_round_trip(self, tmp_path):
        b, _ = make_batch()
        self.write(tmp_path, b)
        assert len(self.read(tmp_path, "hook_runs")) == 6
        assert len(self.read(tmp_path, "script_runs")) == 2 + 5 * 8
        assert len(self.read(tmp_path, "gpu_samples")) == 8
        (dl,) = self.read(tmp_path, "dead_letters")
        assert dl[NAMES["dead_letters"].index("reason")] == "malformed"
        assert len(self.read(tmp_path, "span_events")) == 1

    def test_redelivery_stores_nothing_twice(self, tmp_path):
        b, items = make_batch()
        self.write(tmp_path, b)
        again, _ = make_batch(dup_of=items)  # same stream seqs: a redelivery
        self.write(tmp_path, again)
        later, _ = make_batch(first_seq=100, dup_of=items)  # duplicate publish: new seqs
        self.write(tmp_path, later)
        hooks = self.read(tmp_path, "hook_runs")
        assert len(hooks) == 6
        seq_col = NAMES["hook_runs"].index("stream_seq")
        assert max(r[seq_col] for r in hooks) < 100  # the first copy wins
        journal = self.read(tmp_path, "journal")
        assert len(journal) == len({tuple(r[:4]) for r in journal})  # cluster, node, chain, seq
        # the dead letter of the duplicate publish has its own stream seq
        assert len(self.read(tmp_path, "dead_letters")) == 2

    def test_recreated_chain_loses_no_record(self, tmp_path):
        """A node's journal re-created (reimaged, spool wiped): the new chain
        starts at seq 1 again.  Both chains' records are stored, none dropped,
        and a replay of both stores nothing twice."""
        b = Batch("t1")
        node = Node("reimg01")
        chains = []
        for _ in range(2):
            recs = [node.node_event(reason=f"r{i}") for i in range(3)]
            assert [r[C.R_SEQ] for r in recs] == [1, 2, 3]
            chains.append(node.chain)
            node.new_chain()
            payload = otlp.encode_trace(recs)
            subj = C.subject(C.SIGNAL_SPANS, node.cluster, node.node)
            seq = len(chains)
            b.add(decode_message(payload, subj, seq, NOW), seq, subj, NOW, payload, None, node.cluster)
        assert chains[0] != chains[1]
        self.write(tmp_path, b)
        self.write(tmp_path, b)  # replay: same rows again
        cols = NAMES["journal"]
        rows = self.read(tmp_path, "journal")
        got = sorted((r[cols.index("chain")], r[cols.index("seq")]) for r in rows)
        assert got == sorted((ch, s) for ch in chains for s in (1, 2, 3))
        assert len(self.read(tmp_path, "node_events")) == 6

    def test_records_without_chain_load_with_empty_chain(self, tmp_path):
        # Written before chain ids existed (same schema version, no "chain").
        node = Node("old01")
        recs = []
        for i in range(2):
            r = node.node_event(reason=f"r{i}")
            del r[C.R_CHAIN]
            r[C.R_HASH] = C.record_hash({k: v for k, v in r.items() if k != C.R_HASH})
            recs.append(r)
        payload = otlp.encode_trace(recs)
        subj = C.subject(C.SIGNAL_SPANS, node.cluster, node.node)
        b = Batch("t1")
        b.add(decode_message(payload, subj, 1, NOW), 1, subj, NOW, payload, None, node.cluster)
        self.write(tmp_path, b)
        cols = NAMES["journal"]
        assert sorted((r[cols.index("chain")], r[cols.index("seq")]) for r in self.read(tmp_path, "journal")) \
            == [("", 1), ("", 2)]


class TestLiveStore(StorageContract):
    def write(self, tmp_path, batch):
        parts, tables = batch.arrow()
        with Store(tmp_path / "s.duckdb", consumer=batch.consumer) as st:
            st.commit(tables, batch.last_seq)

    def read(self, tmp_path, table):
        con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
        try:
            return con.execute(f"SELECT {', '.join(NAMES[table])} FROM {table} ORDER BY ALL").fetchall()
        finally:
            con.close()


class TestArchive(StorageContract):
    def write(self, tmp_path, batch):
        parts, _ = batch.arrow()
        A.Archive(tmp_path / "archive", consumer=batch.consumer).write(parts, batch.first_seq, batch.last_seq)

    def read(self, tmp_path, table):
        return duckdb.execute(A.read_sql(str(tmp_path / "archive"), table) + " ORDER BY ALL").fetchall()


def test_archive_layout_is_hive_partitioned_parquet(tmp_path):
    b, _ = make_batch(first_seq=41)
    parts, _ = b.arrow()
    files = A.Archive(tmp_path, consumer="host-a").write(parts, b.first_seq, b.last_seq)
    date = time.strftime("%Y-%m-%d", time.gmtime(NOW // 10**9))
    assert str(tmp_path / "hook_runs" / f"date={date}" / "gpu1" / "host-a-000000000041-000000000048.parquet") in files
    assert {os.path.relpath(f, tmp_path).split(os.sep)[0] for f in files} == \
        set(schema.ARCHIVE_TABLES) - {"node_events", "chain_heads"}  # none of those in this batch
    # plain Parquet, the identity inside the files, one date partition: read with defaults
    n = duckdb.execute(f"SELECT count(*) FROM read_parquet('{tmp_path}/raw/**/*.parquet')").fetchone()[0]
    assert n == 8
    import pyarrow.parquet as pq
    t = pq.read_table(str(tmp_path / "script_runs"))
    assert t.num_rows == 42 and "date" in t.column_names and set(t.column("cluster").to_pylist()) == {"gpu1"}
    assert pq.read_table(str(tmp_path / "node_events")).num_rows == 0  # empty, with its schema
    assert str(t.schema.field("stream_seq").type) == "int64"  # no unsigned types


def test_empty_archive_reads_as_empty_tables(tmp_path):
    for t in schema.ARCHIVE_TABLES:
        if t == "raw":
            continue
        assert duckdb.execute(A.read_sql(str(tmp_path), t)).fetchall() == []


def test_odd_cluster_names_round_trip_through_the_partition_path(tmp_path):
    node = Node("n1", cluster="lab/a 001")
    subj, mid, payload, _ = hook_message(node)
    b = Batch("t")
    b.add(decode_message(payload, subj, 1, NOW), 1, subj, NOW, payload, mid, None)
    parts, _ = b.arrow()
    A.Archive(tmp_path, consumer="t").write(parts, 1, 1)
    assert duckdb.execute(f"SELECT DISTINCT cluster FROM ({A.read_sql(str(tmp_path), 'hook_runs')})").fetchall() == \
        [("lab/a 001",)]


def test_ingest_state_moves_with_the_rows(tmp_path):
    b, _ = make_batch(first_seq=10)
    _, tables = b.arrow()
    with Store(tmp_path / "s.duckdb", consumer="c1") as st:
        st.commit(tables, b.last_seq)
        assert st.last_seq() == 17
        st.commit({}, 5)  # an older sequence never moves it back
        assert st.last_seq() == 17


def test_failed_commit_rolls_back_rows_and_seq(tmp_path):
    b, _ = make_batch()
    _, tables = b.arrow()
    import pyarrow as pa
    bad = tables["hook_runs"].set_column(NAMES["hook_runs"].index("context"), "context",
                                         pa.array([None] * tables["hook_runs"].num_rows, pa.string()))
    with Store(tmp_path / "s.duckdb") as st:
        with pytest.raises(duckdb.Error):
            st.commit(dict(tables, hook_runs=bad), b.last_seq)
        assert st.counts()["journal"] == 0 and st.last_seq() == 0


def test_snapshot_is_a_readable_copy_and_the_lock_survives(tmp_path):
    db = tmp_path / "s.duckdb"
    b, _ = make_batch()
    _, tables = b.arrow()
    st = Store(db, snapshot_interval=0)
    try:
        st.commit(tables, b.last_seq)
        snap = st.snapshot()
        assert snap == schema.snapshot_path(str(db))
        code = ("import duckdb,sys\n"
                "try:\n duckdb.connect(sys.argv[1], read_only=True); print('opened')\n"
                "except duckdb.Error as e: print('locked')\n"
                "print(duckdb.connect(sys.argv[2], read_only=True).execute('select count(*) from hook_runs').fetchone()[0])")
        out = subprocess.run([sys.executable, "-c", code, str(db), snap], capture_output=True, text=True,
                             timeout=60).stdout.split()
        assert out == ["locked", "6"]  # copying did not drop the writer's lock
    finally:
        st.close()


def test_second_writer_is_refused_with_a_clear_error(tmp_path):
    db = tmp_path / "s.duckdb"
    st = Store(db)
    try:
        code = ("import sys\nfrom collector.store import Store, StoreLocked\n"
                "try:\n Store(sys.argv[1])\nexcept StoreLocked as e: print('LOCKED', e)\n")
        r = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, timeout=60,
                           cwd=str(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
        assert r.stdout.startswith("LOCKED") and str(db) in r.stdout and "one collector per DuckDB file" in r.stdout
    finally:
        st.close()


def test_not_a_duckdb_file(tmp_path):
    db = tmp_path / "s.duckdb"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError) as ei:
        Store(db)
    assert str(db) in str(ei.value) and "rebuild" in str(ei.value)
    assert db.read_bytes().startswith(b"this is not")  # nothing overwritten


def test_rebuild_from_archive_keeps_old_store_on_failure(tmp_path):
    db = tmp_path / "s.duckdb"
    b, _ = make_batch()
    _, tables = b.arrow()
    with Store(db) as st:
        st.commit(tables, b.last_seq)
    bad = tmp_path / "archive" / "hook_runs" / "cluster=x" / "date=2026-01-01"
    bad.mkdir(parents=True)
    (bad / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(Exception):
        from_archive(str(tmp_path / "archive"), str(db), progress=False)
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*) FROM hook_runs").fetchone()[0] == 6
    con.close()


def test_archive_files_from_before_chain_ids_read_with_empty_chain(tmp_path):
    """Journal Parquet files archived before the chain column: rebuild and
    readers see chain '' (a NULL would break the store's key)."""
    import pyarrow.parquet as pq

    b, _ = make_batch()
    parts, _ = b.arrow()
    A.Archive(tmp_path / "archive", consumer="t1").write(parts, b.first_seq, b.last_seq)
    files = A.Archive(str(tmp_path / "archive"), consumer="t1").files("journal")
    assert files
    n = 0
    for f in files:
        t = pq.read_table(f)
        n += t.num_rows
        pq.write_table(t.drop_columns(["chain"]), f)
    rows = duckdb.execute(A.read_sql(str(tmp_path / "archive"), "journal")).fetchall()
    assert len(rows) == n and {r[NAMES["journal"].index("chain")] for r in rows} == {""}
    counts = from_archive(str(tmp_path / "archive"), str(tmp_path / "r.duckdb"), progress=False)
    assert counts["journal"] == n


@pytest.mark.parametrize("reply,expect", [
    ("$JS.ACK.HOOKSCOPE.hookscope-collector.1.42.40.1733300000000000000.7", (42, 1733300000000000000, 7, 1)),
    ("$JS.ACK.dom.acchash.HOOKSCOPE.c.2.43.41.1733300000000000001.0.rand", (43, 1733300000000000001, 0, 2)),
])
def test_parse_reply(reply, expect):
    assert parse_reply(reply) == expect


def test_memory_limit_holds_without_out_of_memory_errors(tmp_path):
    """Under a memory limit the un-checkpointed part of the key indexes cannot
    be evicted: a long burst without a snapshot must not fail the commit (it
    would be retried forever).  The store checkpoints and commits again."""
    node = Node("mem01")
    payloads = [hook_message(node, n_scripts=8)[:3] for _ in range(400)]
    # 36MB, one thread: measured with DuckDB 2.0, the commit without the
    # checkpoint-and-retry fails in round 2; with it, 40 rounds pass.  (32MB
    # before the journal key gained the 16-char chain id, which DuckDB cannot
    # inline: strings over 12 bytes live on the heap; at 32MB it now fails.)
    store = Store(tmp_path / "m.duckdb", consumer="t1", snapshot_interval=3600, memory_limit="36MB", threads=1)
    try:
        seq = 0
        for rnd in range(10):  # 4000 hooks, 72k journal rows; snapshots never due
            b = Batch("t1")
            for subj, mid, payload in payloads:
                seq += 1
                # same records, new hook/seq keys per round: fresh index entries
                b.add(decode_message(payload, subj, seq, NOW), seq, subj, NOW, payload, f"{mid}.{rnd}", "gpu1")
            parts, tables = b.arrow()
            for t in ("journal", "hook_runs", "script_runs"):
                tables[t] = _rekey(tables[t], t, rnd)
            store.commit(tables, seq)
        got = store.counts()
        assert got["hook_runs"] == seq and got["journal"] == 10 * 400 * 18
    finally:
        store.close(snapshot=False)


def _rekey(tb, table, rnd):
    """Make the key columns of ``tb`` unique to round ``rnd``."""
    import pyarrow.compute as pc

    col = {"journal": "node", "hook_runs": "hook_id", "script_runs": "span_id"}[table]
    i = tb.schema.get_field_index(col)
    return tb.set_column(i, col, pc.binary_join_element_wise(tb.column(col), str(rnd), "-"))


def test_a_store_dying_while_created_leaves_no_half_file(tmp_path, monkeypatch):
    """A collector killed while DuckDB wrote a new file's headers left a file no
    later start could open (test_faults' kill -9 hit it).  A new store is made
    under a temporary name and renamed: the path has the whole file or none."""
    import collector.store as S

    path = tmp_path / "new.duckdb"

    def dies(con):
        assert not path.exists(), "the store's path must not exist before it is complete"
        raise duckdb.IOException("simulated crash while creating")

    monkeypatch.setattr(S.schema, "create_all", dies)
    with pytest.raises(StoreError, match="cannot create the store"):
        Store(path)
    assert not path.exists() and not list(tmp_path.glob("new.duckdb*"))
    monkeypatch.undo()
    with Store(path) as st:
        assert st.last_seq() == 0

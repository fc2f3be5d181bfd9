"""A long ingest at reduced scale (issue 14): memory and snapshot files stay
flat while history grows 5x.

Decoder-shaped Arrow batches (tests/bench/bench_ingest.py: hook_runs,
script_runs, journal, span_events, gpu_samples; redeliveries and an agent's
backlog mixed in) go through the real ``Store.commit`` and publications, as
the collector runs them.  Asserted between 20 % and 100 % of the ingest:

* the process's memory beyond DuckDB's cache of stored blocks and its rows
  not yet checkpointed (RSS minus ``duckdb_memory()``'s BASE_TABLE, which
  DuckDB evicts under its ``memory_limit``, and IN_MEMORY_TABLE, the
  sawtooth of the store's checkpoint interval, whose phase at the tenths
  would otherwise decide the result), its floor over the batches of a
  tenth, grows by less than ``GROWTH_MB`` from the third tenth to the last.
  With version 1's PRIMARY KEYs (an ART index, ~57 bytes a row, kept in
  memory) it grew by more (checked when this test was written: see
  docs/store.md "Memory");
* the rows not yet checkpointed stay under twice the store's checkpoint
  interval (``Store.checkpoint_wal_bytes`` of WAL: 256 MB at this test's
  2GB limit; version 1 kept them until a snapshot publication, and they
  grew with the ingest);
* DuckDB holds no key index (ART_INDEX memory);
* the snapshot directory (files superseded more than a second ago
  collected: the 60 s grace is longer than the test) gains at most one size level of parts
  (``snapshot.FANOUT - 1`` parts per table) while the rows grow 5x, and every
  generated row is stored exactly once.

No timing is asserted.
"""

import os

import pytest

from collector.snapshot import DATA, FANOUT, snapshot_dir
from collector.store import Store
from tests.bench.bench_ingest import expected_rows, make_batch, rss_mb

HOOKS = 500            # per batch: 15,000 rows (+ redelivered and backlog rows)
BATCHES = 100          # 1.5 M rows, ~17 hours of node time
GROWTH_MB = 40

pytestmark = pytest.mark.slow  # ~30 s on 2 loaded cores


def duck_mb(con, tag):
    return con.execute("SELECT coalesce(sum(memory_usage_bytes), 0) / 1048576 FROM duckdb_memory() "
                       "WHERE tag = ?", [tag]).fetchone()[0]


def test_memory_and_snapshot_files_stay_flat_while_history_grows(tmp_path):
    db = str(tmp_path / "long.duckdb")
    # memory_limit far above what the test stores: DuckDB never has to evict,
    # so any index would stay in memory, as at a site with the default limit
    st = Store(db, consumer="long", snapshot_interval=0.5, memory_limit="2GB", threads=2)
    samples, own, unckpt = [], [], []
    try:
        for k in range(BATCHES):
            tables, last = make_batch(k, HOOKS, 600.0, backlog_days=14, backlog=k % 25 == 24,
                                      dup_of=k - 5 if k >= 5 else None, dup=0.02)
            st.commit(tables, last)
            st.maybe_snapshot()
            # files readers of an older catalog may still hold are kept
            # GRACE_S (60 s, longer than this test): count what stays
            st._split.grace_s = 1.0
            unckpt.append(duck_mb(st.con, "IN_MEMORY_TABLE"))
            own.append(rss_mb() - duck_mb(st.con, "BASE_TABLE") - unckpt[-1])
            if k % 10 == 9:
                samples.append((round(own[-1]), duck_mb(st.con, "ART_INDEX"), len(os.listdir(snapshot_dir(db))),
                                round(unckpt[-1])))
        st.snapshot()
        counts = st.counts()
    finally:
        st.close()
    for t, n in expected_rows(HOOKS, BATCHES, 25).items():
        assert counts[t] == n, (t, counts[t], n)
    # the floor over a tenth of the batches each: growth (an index, rows
    # kept) raises it; a spike (a publication's Parquet buffers, Arrow
    # temporaries, allocator slack after a merge) does not, however the
    # machine's load shifts when publications happen
    early = min(own[BATCHES * 2 // 10:BATCHES * 3 // 10])
    late = min(own[BATCHES * 9 // 10:])
    print(f"(own MB, ART MB, snapshot files, not checkpointed MB) at each tenth: {samples}; "
          f"floor of own MB early {early:.0f}, "
          f"late {late:.0f}")
    assert late - early < GROWTH_MB, f"memory beyond DuckDB's block cache grew {late - early:.0f} MB: {samples}"
    assert max(s[1] for s in samples) < 1, f"a key index in memory: {samples}"
    bound = 2 * st.checkpoint_wal_bytes / 2**20
    assert max(unckpt) < bound, f"rows not checkpointed: up to {max(unckpt):.0f} MB (< {bound:.0f}): {samples}"
    assert samples[-1][2] <= samples[1][2] + (FANOUT - 1) * len(DATA), f"snapshot files: {samples}"

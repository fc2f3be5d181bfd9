"""The store's checkpoint interval, side by side (apart from `make test`).

    .venv/bin/python tests/bench/bench_checkpoint.py                 # 30,000 messages; 64 and 256 MB
    .venv/bin/python tests/bench/bench_checkpoint.py --mb 16,64,256 --messages 10000

The collector bench's messages (256 nodes, 8 scripts a hook), decoded and
converted once, then committed by ``Store.commit`` into a fresh store per
interval (``Store.checkpoint_wal_bytes``), one store after the other in
the same process, the order alternating per round.  Printed per interval:
the commits' wall and CPU time per span (checkpoints included), the final
checkpoint at the end (the rows the last interval had not written yet),
the largest share of rows not yet checkpointed (DuckDB's IN_MEMORY_TABLE)
after a commit, and the file's size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from collector.fetched import build_batch  # noqa: E402
from collector.store import Store  # noqa: E402
from emitter import contract as C  # noqa: E402
from tests.bench.bench_collector import make_messages  # noqa: E402
from tests.bench.collector_stages import SPANS_PER_MSG, _fake_msgs  # noqa: E402

FETCH = 1222  # messages per fetch in bench_collector's end-to-end runs


def one(batches, mb, spans):
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "c.duckdb")
        store = Store(path, consumer="bench", snapshot_interval=3600)
        store.checkpoint_wal_bytes = mb << 20
        peak = 0.0
        t, c = time.perf_counter(), time.process_time()
        for b, (_, tables) in batches:
            store.commit(tables, b.last_seq)
            peak = max(peak, store.con.execute(
                "SELECT coalesce(sum(memory_usage_bytes), 0) / 1048576 FROM duckdb_memory() "
                "WHERE tag = 'IN_MEMORY_TABLE'").fetchone()[0])
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        t = time.perf_counter()
        store.con.execute("CHECKPOINT")
        final = time.perf_counter() - t
        size = os.path.getsize(path)
        store.close(snapshot=False)
        return wall / spans * 1e6, cpu / spans * 1e6, final / spans * 1e6, peak, size / 2**20
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=30000)
    ap.add_argument("--mb", default="64,256", help="intervals to compare, MB of WAL (comma list)")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    intervals = [int(x) for x in args.mb.split(",")]
    fake = _fake_msgs(make_messages(args.messages))
    batches = [build_batch(fake[i:i + FETCH], "bench", False, C.MAX_MESSAGE_BYTES)
               for i in range(0, len(fake), FETCH)]
    spans = args.messages * SPANS_PER_MSG
    print(f"{args.messages} messages, {spans} spans, {len(batches)} commits")
    res = {mb: [] for mb in intervals}
    for r in range(args.rounds):
        for mb in (intervals if r % 2 == 0 else intervals[::-1]):
            res[mb].append(one(batches, mb, spans))
            w, c, f, p, s = res[mb][-1]
            print(f"  round {r} {mb:4d} MB: commits {w:6.2f} µs/span wall, {c:6.2f} CPU; final checkpoint "
                  f"{f:5.2f}; not checkpointed up to {p:4.0f} MB; file {s:4.0f} MB", flush=True)
    base = intervals[0]
    for mb in intervals:
        w = [x[0] + x[2] for x in res[mb]]
        b = [x[0] + x[2] for x in res[base]]
        print(f"{mb:4d} MB: commits + final checkpoint {sum(w) / len(w):6.2f} µs/span "
              f"= {sum(b) / sum(w):.2f}x the {base} MB interval's speed; not checkpointed up to "
              f"{max(x[3] for x in res[mb]):.0f} MB; file {res[mb][-1][4]:.0f} MB")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The live store's journal compression, side by side (docs/benchmarks.md
"Journal compression").

The same decoded batches (the collector bench's messages: 9 spans each,
``--batch`` messages a commit) go through ``Store.commit`` into two new
stores, rounds alternating which goes first:

* ``default``: every column left to DuckDB's choice at each checkpoint (the
  store before ``schema.ZSTD_COLUMNS``; made by pretending the file cannot
  hold zstd, the path an older storage version takes);
* ``zstd``: the journal's ``record``, ``hash`` and ``prev`` declared
  ``USING COMPRESSION zstd`` (what a new store gets now).

The time includes the store's own checkpoints (every 64 MB of WAL,
``store.CHECKPOINT_WAL_BYTES``) and the final one at close: the rows must
reach the file either way.  Printed per variant: commit time per span
(wall and process CPU), the part spent in CHECKPOINT, the file size; then
the ratios.  Both stores must hold the same rows (asserted).

Usage: bench_store_compression.py [--messages 24576] [--batch 2048] [--rounds 2] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the repo's packages and tests.*

from collector import schema  # noqa: E402
from collector.fetched import build_batch  # noqa: E402
from collector.store import Store  # noqa: E402
from emitter import contract as C  # noqa: E402
from tests.bench.bench_collector import make_messages  # noqa: E402
from tests.bench.collector_stages import _fake_msgs  # noqa: E402


class _Timed:
    """The store's connection, with the time its CHECKPOINT statements take."""

    def __init__(self, con):
        self.con, self.checkpoint_s = con, 0.0

    def execute(self, sql, *args):
        if not sql.startswith("CHECKPOINT"):
            return self.con.execute(sql, *args)
        t0 = time.perf_counter()
        try:
            return self.con.execute(sql, *args)
        finally:
            self.checkpoint_s += time.perf_counter() - t0

    def __getattr__(self, name):
        return getattr(self.con, name)


def run(variant: str, batches, tmp: str) -> dict:
    path = os.path.join(tmp, f"{variant}.duckdb")
    real = schema.zstd_available
    if variant == "default":
        schema.zstd_available = lambda con: False
    try:
        st = Store(path, consumer="bench")
    finally:
        schema.zstd_available = real
    timed = st.con = _Timed(st.con)
    spans = sum(b.n_spans for b, _ in batches)
    c0, t0 = os.times(), time.perf_counter()
    for b, (_parts, tables) in batches:
        st.commit(tables, b.last_seq)
    counts = st.counts()
    st.con.execute("CHECKPOINT")  # what is left in the WAL reaches the file too
    st.con = timed.con
    wall = time.perf_counter() - t0
    c1 = os.times()
    ckpt = timed.checkpoint_s
    st.close(snapshot=False)
    size = os.path.getsize(path)
    for p in (path, path + ".wal"):
        if os.path.exists(p):
            os.unlink(p)
    return {"us_wall": wall / spans * 1e6, "us_cpu": (c1.user + c1.system - c0.user - c0.system) / spans * 1e6,
            "checkpoint_share": ckpt / wall, "mb": size / 2**20, "counts": counts, "spans": spans}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=24576, help="hook messages (9 spans each)")
    ap.add_argument("--batch", type=int, default=2048, help="messages per commit")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="4,096 messages, one round (~15 s)")
    args = ap.parse_args()
    if args.quick:
        args.messages, args.rounds = 4096, 1
    fake = _fake_msgs(make_messages(args.messages))
    batches = [build_batch(fake[i:i + args.batch], "bench", False, C.MAX_MESSAGE_BYTES)
               for i in range(0, len(fake), args.batch)]
    del fake
    print(f"# bench_store_compression: {args.messages} messages, {sum(b.n_spans for b, _ in batches)} spans, "
          f"batches of {args.batch}, {args.rounds} round(s)")
    res: dict = {"default": [], "zstd": []}
    with tempfile.TemporaryDirectory(prefix="hookscope-bench-compression-") as tmp:
        for r in range(args.rounds):
            for v in (("default", "zstd") if r % 2 == 0 else ("zstd", "default")):
                out = run(v, batches, tmp)
                res[v].append(out)
                print(f"  round {r} {v:8s}: {out['us_wall']:6.2f} us/span wall, {out['us_cpu']:6.2f} us/span CPU, "
                      f"checkpoints {out['checkpoint_share']:.0%} of it, file {out['mb']:.0f} MB")
    assert res["default"][0]["counts"] == res["zstd"][0]["counts"], (res["default"][0]["counts"],
                                                                     res["zstd"][0]["counts"])

    def mean(v, k):
        return sum(o[k] for o in res[v]) / len(res[v])

    for v in ("default", "zstd"):
        print(f"{v:8s} mean: {mean(v, 'us_wall'):6.2f} us/span wall, {mean(v, 'us_cpu'):6.2f} us/span CPU, "
              f"checkpoints {mean(v, 'checkpoint_share'):.0%}, file {mean(v, 'mb'):.0f} MB")
    print(f"zstd vs default: commit {mean('default', 'us_wall') / mean('zstd', 'us_wall'):.2f}x faster (wall), "
          f"{mean('default', 'us_cpu') / mean('zstd', 'us_cpu'):.2f}x less CPU, "
          f"file {mean('zstd', 'mb') / mean('default', 'mb'):.2f}x the size; stored {res['zstd'][0]['counts']}")


if __name__ == "__main__":
    main()

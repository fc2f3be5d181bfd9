#!/usr/bin/env python3
"""Readers' snapshot: what one publication costs on a small and a large store.

Side by side in one run, on the same two stores (``--small`` and ``--large``
rows of script_runs, plus as many journal rows):

* ``copy``: the first design, CHECKPOINT then a copy of the whole live file
  (``copy_file_range``, fsync), as ``Store.snapshot`` did before issue 14;
* ``split``: the current ``Store.snapshot``: cut the rows since the last seal
  (``collector/snapshot.py``), publish the catalog (a CHECKPOINT only once
  per 16 MB of WAL: a second of ingest here stays under it).

Also printed, for the record, a CHECKPOINT after a second of ingest, which
the copy design paid at every publication: it grows with the key indexes
(issue 14, bounded dedup memory).

Before each timed publication ``--batch`` new rows are committed (what a
second of ingest adds).  Printed: median ms per publication for each store
and design, and the large/small ratio of each (the split design's should stay
near 1: its cost does not grow with history), plus a reader's open+count
through the catalog.

Usage: bench_snapshot.py [--small 100000] [--large 3000000] [--batch 2000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402

from collector import schema  # noqa: E402
from collector.store import Store  # noqa: E402

_SCRIPT = """SELECT md5('s' || ({o} + i)::VARCHAR)[:16], md5('h' || (({o} + i) // 8)::VARCHAR)[:16],
  md5('t' || (({o} + i) // 64)::VARCHAR), 'c1', 'n' || (i % 4096)::VARCHAR, 'prolog_slurmd',
  (({o} + i) // 64)::VARCHAR, 'alice', (i % 8)::INTEGER, '/etc/slurm/prolog.d/' || (i % 8)::VARCHAR,
  md5(i::VARCHAR), 1234, 493, 0, now(), now() - INTERVAL 1 DAY + (i * INTERVAL 1 MILLISECOND), now(),
  12.5, 0, NULL, false, NULL, false, NULL, false, NULL, ({o} + i)::UBIGINT, 0
  FROM range({n}) t(i)"""
_JOURNAL = """SELECT 'c1', 'n' || (i % 4096)::VARCHAR, 'chain', ({o} + i)::UBIGINT, 'script_ended',
  md5('h' || i::VARCHAR)[:16], md5('x' || ({o} + i)::VARCHAR), md5('y' || ({o} + i)::VARCHAR),
  '{{"k":"script_ended","seq":' || ({o} + i)::VARCHAR || ',"payload":"' || repeat('x', 120) || '"}}', 0
  FROM range({n}) t(i)"""


def add_rows(st: Store, offset: int, n: int) -> None:
    with st._lock:
        st.con.execute("INSERT INTO script_runs " + _SCRIPT.format(o=offset, n=n))
        st.con.execute("INSERT INTO journal " + _JOURNAL.format(o=offset, n=n))
        st._dirty = True


def copy_publish(st: Store) -> None:
    """The first design: CHECKPOINT, copy the whole file, fsync, rename."""
    dst = st.path + ".copy.duckdb"
    with st._lock:
        st.con.execute("CHECKPOINT")
        size = os.fstat(st._fd).st_size
        out = os.open(dst + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            off = 0
            while off < size:
                n = os.copy_file_range(st._fd, out, size - off, off, off)
                if n <= 0:
                    break
                off += n
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(dst + ".tmp", dst)


def measure(rows: int, batch: int, repeat: int, tmp: str) -> dict:
    db = os.path.join(tmp, f"s{rows}.duckdb")
    st = Store(db, snapshot_interval=0)
    try:
        t0 = time.perf_counter()
        step = 500_000
        for o in range(0, rows, step):
            add_rows(st, o, min(step, rows - o))
        st.snapshot()  # the first publication cuts history once (sealed parts)
        build = time.perf_counter() - t0
        off = rows + 10_000_000
        res = {"copy": [], "split": [], "read": [], "checkpoint": [], "publish": []}
        for _ in range(repeat):
            # the split design in two steps: what each costs
            add_rows(st, off, batch)
            off += batch
            t = time.perf_counter()
            with st._lock:
                st.con.execute("CHECKPOINT")
            t1 = time.perf_counter()
            with st._lock:
                st._split.publish()
            res["checkpoint"].append(t1 - t)
            res["publish"].append(time.perf_counter() - t1)
            for name, fn in (("copy", copy_publish), ("split", Store.snapshot)):
                add_rows(st, off, batch)
                off += batch
                t = time.perf_counter()
                fn(st)
                res[name].append(time.perf_counter() - t)
            t = time.perf_counter()
            con = duckdb.connect(schema.snapshot_path(db), read_only=True)
            con.execute("SELECT count(*) FROM script_runs WHERE node = 'n7'").fetchone()
            con.close()
            res["read"].append(time.perf_counter() - t)
        size = os.path.getsize(db)
        parts = len(st._split.parts)
    finally:
        st.close(snapshot=False)
    out = {k: statistics.median(v) * 1000 for k, v in res.items()}
    out.update(size_mb=size / 1e6, build_s=build, parts=parts)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--large", type=int, default=3_000_000)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temporary directory)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        small = measure(a.small, a.batch, a.repeat, tmp)
        large = measure(a.large, a.batch, a.repeat, tmp)
    for label, r, n in (("small", small, a.small), ("large", large, a.large)):
        print(f"{label}: {n:,} script_runs + {n:,} journal rows, file {r['size_mb']:.0f} MB, "
              f"{r['parts']} sealed parts: copy {r['copy']:.1f} ms, split {r['split']:.1f} ms "
              f"(= CHECKPOINT {r['checkpoint']:.1f} + cut and catalog {r['publish']:.1f} ms), "
              f"reader open+query {r['read']:.1f} ms")
    print(f"large/small: copy {large['copy'] / small['copy']:.2f}x, split {large['split'] / small['split']:.2f}x "
          f"(CHECKPOINT {large['checkpoint'] / small['checkpoint']:.2f}x, "
          f"cut and catalog {large['publish'] / small['publish']:.2f}x); "
          f"on the large store split/copy = {large['split'] / large['copy']:.3f}")


if __name__ == "__main__":
    main()

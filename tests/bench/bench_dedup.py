#!/usr/bin/env python3
"""Dedup strategies for the live store, measured side by side (issue 14,
"bounded dedup memory: choose by measurement").  The data the choice was
made on: the store now dedups with the ``window`` strategy
(``collector.dedup``; the real store over 50 M rows:
tests/bench/bench_ingest.py).

One table shaped like script_runs' key and time (span_id: 16 hex, start_ts
rising with jitter, a 200-byte payload), loaded in ``--batch`` row batches;
every batch also carries ``--dup`` of its rows again from an earlier batch
(a redelivery), so each strategy must end with exactly ``--rows`` rows.

* ``pk``: ``span_id PRIMARY KEY`` + ``INSERT OR IGNORE`` (store version 1:
  an ART index in memory, ~57 bytes a row measured in the issue);
* ``window``: no key; ``INSERT ... WHERE NOT EXISTS`` a row with the same
  span_id AND start_ts among rows whose start_ts is within the batch's
  [min, max] (a duplicate is the same record, so it has the same time; the
  time bound lets DuckDB skip row groups by their min/max).

Each runs in its own process; printed: rows stored (must be equal), RSS at
the end, and rows/s over the first and the last tenth of the batches (the
window strategy's cost must not grow with history for it to be a candidate).

Usage: bench_dedup.py [--rows 2000000] [--batch 10000] [--dup 0.01] [--memory-limit 1GB]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

SETUP = {
    "pk": "CREATE TABLE t (span_id VARCHAR PRIMARY KEY, start_ts TIMESTAMPTZ NOT NULL, payload VARCHAR)",
    "window": "CREATE TABLE t (span_id VARCHAR NOT NULL, start_ts TIMESTAMPTZ NOT NULL, payload VARCHAR)",
}
INSERT = {
    "pk": "INSERT OR IGNORE INTO t SELECT * FROM b",
    "window": """INSERT INTO t SELECT * FROM (SELECT DISTINCT ON (span_id, start_ts) * FROM b) x
                 WHERE NOT EXISTS (SELECT 1 FROM t WHERE t.span_id = x.span_id AND t.start_ts = x.start_ts
                                   AND t.start_ts BETWEEN (SELECT min(start_ts) FROM b)
                                                      AND (SELECT max(start_ts) FROM b))""",
}
# Batch k: rows k*B .. k*B+B-1, plus dup*B rows of batch k-5 again.
BATCH = """SELECT md5('s' || r::VARCHAR)[:16] AS span_id,
                  TIMESTAMPTZ '2026-01-01' + to_microseconds((r * 1000 + (hash(r) % 5000000))::BIGINT) AS start_ts,
                  repeat('x', 200) AS payload
           FROM (SELECT range AS r FROM range({lo}, {hi})
                 UNION ALL SELECT range FROM range({dlo}, {dhi})) q"""


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(strategy: str, rows: int, batch: int, dup: float, limit: str, path: str) -> None:
    import duckdb
    con = duckdb.connect(path)
    con.execute(f"SET memory_limit = '{limit}'")
    con.execute("SET checkpoint_threshold = '1GB'")
    con.execute(SETUP[strategy])
    n_batches = rows // batch
    times = []
    for k in range(n_batches):
        lo, hi = k * batch, (k + 1) * batch
        dk = max(0, k - 5) * batch
        sql = BATCH.format(lo=lo, hi=hi, dlo=dk, dhi=dk + int(batch * dup))
        t0 = time.perf_counter()
        con.execute("BEGIN")
        con.execute(f"CREATE OR REPLACE TEMP TABLE b AS {sql}")
        con.execute(INSERT[strategy])
        con.execute("COMMIT")
        times.append(time.perf_counter() - t0)
        if k % 20 == 19:
            con.execute("CHECKPOINT")
    con.execute("CHECKPOINT")
    tenth = max(1, n_batches // 10)
    print(json.dumps({
        "rows": con.execute("SELECT count(*) FROM t").fetchone()[0],
        "rss_mb": rss_mb(),
        "first": tenth * batch / sum(times[:tenth]),
        "last": tenth * batch / sum(times[-tenth:]),
    }))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--dup", type=float, default=0.01)
    ap.add_argument("--memory-limit", default="1GB")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child[0], a.rows, a.batch, a.dup, a.memory_limit, a.child[1])
        return
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for s in ("pk", "window"):
            out = subprocess.run([sys.executable, __file__, "--rows", str(a.rows), "--batch", str(a.batch),
                                  "--dup", str(a.dup), "--memory-limit", a.memory_limit,
                                  "--child", s, os.path.join(tmp, f"{s}.duckdb")],
                                 capture_output=True, text=True, check=True).stdout
            res[s] = json.loads(out.strip().splitlines()[-1])
    for s, r in res.items():
        print(f"{s:6}: {r['rows']:,} rows, RSS {r['rss_mb']:.0f} MB, rows/s first tenth {r['first']:,.0f}, "
              f"last tenth {r['last']:,.0f} ({r['last'] / r['first']:.2f}x)")
    p, w = res["pk"], res["window"]
    print(f"window/pk: RSS {w['rss_mb'] / p['rss_mb']:.2f}x, last-tenth rows/s {w['last'] / p['last']:.2f}x; "
          f"same rows: {p['rows'] == w['rows'] == a.rows}")


if __name__ == "__main__":
    main()

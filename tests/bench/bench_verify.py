"""Benchmark: ``audit verify`` throughput, beside its floor, in the same run.

Builds a store with the queries tests' builder (journal records chained per
the journal spec and the rows the collector derives from them): ``--hooks``
hooks (default 20,000) of two scripts each on ``--nodes`` nodes, every
script with 200 bytes of output, plus one signed chain head per chain.
Then, on the same DuckDB file, medians of ``--repeat`` runs:

* the floor: stream every journal record and recompute its hash (one JSON
  parse and one sha256 per record, what any verifier of the chain must do);
* ``verify_chain``: the walk, the derived-row checks and the heads.

Prints records/s for each and the ratio.  Usage:

    .venv/bin/python tests/bench/bench_verify.py [--hooks 20000] [--nodes 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script: the repo's packages and tests.*


def build(path: str, hooks: int, nodes: int) -> int:
    import duckdb
    import nkeys
    import pyarrow as pa

    from tests.queries.builder import T0, StoreBuilder, script

    from queries.verify_heads import head_payload

    b = StoreBuilder(cluster="bench")
    scripts = [script("/etc/slurm/prolog.d/10-a.sh", output="a" * 200),
               script("/etc/slurm/prolog.d/20-b.sh", output="b" * 200)]
    for h in range(hooks):
        b.hook(f"node{h % nodes:04d}", T0 + h * timedelta(seconds=1), "prolog_slurmd", 100_000 + h, "u", scripts)
    b.write_db(path)
    last = {}
    for j in b.rows["journal"]:
        last[(j["cluster"], j["node"], j["chain"])] = j
    kp = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    heads = []
    for (cl, nd, ch), j in last.items():
        ts = json.loads(j["record"])["ts"] + 10**9
        sig = kp.sign(head_payload(cl, nd, ch, j["seq"], j["hash"], ts)).hex()
        heads.append({"cluster": cl, "node": nd, "chain": ch, "seq": j["seq"], "hash": j["hash"],
                      "ts": ts // 1000, "signature": sig, "public_key": kp.public_key.decode()})
    con = duckdb.connect(path)
    con.execute("CREATE TABLE IF NOT EXISTS chain_heads (cluster VARCHAR, node VARCHAR, chain VARCHAR, "
                "seq UBIGINT, hash VARCHAR, ts TIMESTAMPTZ, signature VARCHAR, public_key VARCHAR)")
    con.register("h", pa.Table.from_pylist(heads))
    con.execute("INSERT INTO chain_heads BY NAME SELECT cluster, node, chain, seq, hash, "
                "make_timestamptz(ts) AS ts, signature, public_key FROM h")
    con.close()
    return len(b.rows["journal"])


def floor(con) -> int:
    from emitter import contract as C

    cur = con.execute("SELECT record FROM journal ORDER BY cluster, node, chain, seq")
    n = 0
    while True:
        rows = cur.fetchmany(10_000)
        if not rows:
            return n
        for (text,) in rows:
            C.record_hash(json.loads(text))
            n += 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hooks", type=int, default=20_000)
    ap.add_argument("--nodes", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)

    from queries.source import open_source
    from queries.verify import verify_chain

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.duckdb")
        n = build(path, args.hooks, args.nodes)
        con = open_source(db=path, quiet=True)
        t_floor, t_verify = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            floor(con)
            t_floor.append(time.perf_counter() - t)
            t = time.perf_counter()
            r = verify_chain(con)
            t_verify.append(time.perf_counter() - t)
            assert r["ok"] and r["checked"]["heads"] == args.nodes, r["problems"][:3]
        f, v = statistics.median(t_floor), statistics.median(t_verify)
        print(f"{n} journal records, {args.hooks} hooks on {args.nodes} nodes, {args.nodes} signed heads")
        print(f"floor (parse + hash per record): {f:.2f} s  {n / f:,.0f} records/s")
        print(f"audit verify (walk, rows, heads): {v:.2f} s  {n / v:,.0f} records/s")
        print(f"verify / floor: {v / f:.1f}x the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())

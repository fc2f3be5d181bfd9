"""Benchmark (run by hand, not by `make bench`: it needs a baseline tree and
bench_queries.py's kept data): the same questions on the same data, this tree against a
baseline tree (another checkout of hookscope), side by side in one run.

Each round starts one process per tree (in alternating order, so a change of
machine load falls on both alike); a process opens the source, answers each
question once (its first answer: what ``hookscope why`` on the command line
pays) and then ``--repeat`` more times (what a dashboard pays).  Medians over
the rounds, and the ratio baseline / this tree (> 1: this tree is faster).
Every answer must be the same in both trees.

Data: what ``tests/bench/bench_queries.py --keep`` leaves (its DuckDB store,
its archive, and the compacted copy that ``--compact`` makes):

    .venv/bin/python tests/bench/bench_queries.py --keep --out /tmp/bq --compact --fetches-per-day 1
    mkdir -p /tmp/base && git archive HEAD~1 | tar -x -C /tmp/base
    .venv/bin/python tests/bench/compare_query_trees.py --baseline-tree /tmp/base \\
        --source archive=/tmp/bq/archive-compacted-zstd --source db=/tmp/bq/hookscope.duckdb
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Runs in a child process with the tree under test first on sys.path.
WORKER = r"""
import hashlib, json, sys, time
tree, kind, path, repeat = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ignore = [k for k in sys.argv[5].split(",") if k]
sys.path.insert(0, tree)
from queries.source import open_source
from queries.why import why
from queries.audit import audit_job
from queries.drains import drains
t0 = time.perf_counter()
con = open_source(**{kind: path}, quiet=True)
out = {"open": [(time.perf_counter() - t0) * 1000]}
worst = drains(con)
broken = worst[0]["nodes"][0] if worst else "node0000"
job = con.execute("SELECT job_id FROM hook_runs WHERE node = ? ORDER BY start_ts DESC LIMIT 1", [broken]).fetchone()[0]
cases = {"why": lambda: why(con, broken), "why (flaky node)": lambda: why(con, "node0000"),
         "audit job": lambda: audit_job(con, job), "drains": lambda: drains(con)}
answers = {}
for name, fn in cases.items():
    for i in range(repeat + 1):
        t = time.perf_counter(); res = fn(); ms = (time.perf_counter() - t) * 1000
        out.setdefault(name if i else name + " (first)", []).append(ms)
    if isinstance(res, dict):
        res = {k: v for k, v in res.items() if k not in ignore}
    answers[name] = hashlib.sha256(json.dumps(res, sort_keys=True, default=str).encode()).hexdigest()
print(json.dumps({"times": out, "answers": answers}))
"""


def run_worker(tree: str, kind: str, path: str, repeat: int, ignore: str = "") -> dict:
    py = sys.executable
    r = subprocess.run([py, "-c", WORKER, tree, kind, path, str(repeat), ignore], capture_output=True, text=True,
                       cwd="/", env={**os.environ, "PYTHONPATH": ""})
    if r.returncode:
        raise SystemExit(f"worker for {tree} on {path} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline-tree", required=True, help="a checkout of the baseline (git archive REV)")
    ap.add_argument("--source", action="append", required=True,
                    help="kind=PATH with kind db or archive; repeatable")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5, help="answers per question per process after the first")
    ap.add_argument("--ignore", default="", metavar="KEYS",
                    help="top-level answer keys left out of the same-answer check (comma-separated), "
                         "where this tree changed them on purpose, e.g. node_events")
    a = ap.parse_args(argv)
    trees = {"this": str(ROOT), "baseline": os.path.abspath(a.baseline_tree)}
    for spec in a.source:
        kind, _, path = spec.partition("=")
        if kind not in ("db", "archive") or not path:
            raise SystemExit(f"--source {spec!r}: give db=FILE or archive=DIR")
        per: dict = {}
        for rnd in range(a.rounds):
            order = ("this", "baseline") if rnd % 2 == 0 else ("baseline", "this")
            got = {label: run_worker(trees[label], kind, path, a.repeat, a.ignore) for label in order}
            if got["this"]["answers"] != got["baseline"]["answers"]:
                diff = [k for k in got["this"]["answers"] if got["this"]["answers"][k] != got["baseline"]["answers"][k]]
                raise SystemExit(f"DEFECT: the trees answer differently on {path}: {diff}")
            for label, res in got.items():
                for name, ts in res["times"].items():
                    # first answers: one per process; the rest: the process's median
                    per.setdefault((name, label), []).append(statistics.median(ts))
        same = "same answers in both trees" + (f" but for {a.ignore}" if a.ignore else "")
        print(f"\n== {kind} {path} ({a.rounds} rounds, medians; {same})")
        print(f"  {'question':<26} {'this tree':>10} {'baseline':>10} {'ratio':>7}")
        for name in dict.fromkeys(n for n, _ in per):
            this, base = statistics.median(per[(name, 'this')]), statistics.median(per[(name, 'baseline')])
            print(f"  {name:<26} {this:8.1f} ms {base:8.1f} ms {base / this:6.2f}x")
    load = os.getloadavg()
    print(f"\nload average at the end: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPU(s)")


if __name__ == "__main__":
    main()

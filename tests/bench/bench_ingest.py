#!/usr/bin/env python3
"""Long ingest through the real ``Store.commit``: memory and speed over history
(issue 14, "bounded memory, whatever the history").

Arrow batches shaped like the decoder's output (``columns.ARROW_SCHEMAS``;
per hook: 1 hook_runs, 8 script_runs, 18 journal, 1 span_events row; a GPU
message every 4 hooks: 8 gpu_samples) go through ``Store.commit`` with a
snapshot publication due every second, as the collector runs.  Node clocks
advance ``--seconds-per-batch`` per batch (with jitter); every batch also
carries ``--dup`` of an earlier batch's rows again (a redelivery, same stream
sequences), and every ``--backlog-every`` batches one batch also carries
rows from ``--backlog-days`` ago (an agent's backlog after an outage).  The
store must end with every generated row exactly once.

Each design runs in its own process: this tree, and ``--baseline DIR`` (a
source tree of the version-1 store, PRIMARY KEYs + INSERT OR IGNORE, e.g.
``mkdir /tmp/h2base && git archive fb8228b | tar -x -C /tmp/h2base``) for
``--baseline-rows`` rows.  Printed per design: RSS at each tenth, rows/s
over the first and the last tenth of the batches, rows stored vs expected,
snapshot part files at the end.

``--checkpoint-mb 16,64`` runs this tree once per WAL size between the
store's checkpoints (``store.CHECKPOINT_WAL_BYTES``): the memory it holds
until a checkpoint against the time checkpoints take.

Usage: bench_ingest.py [--rows 5000000] [--baseline DIR --baseline-rows N]
       [--memory-limit 1GB] [--batch-hooks 500] [--checkpoint-mb 16,64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HOUR_NS = 3_600_000_000_000
T0_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z
ROWS_PER_HOOK = 1 + 8 + 18 + 1 + 2  # + 8 gpu_samples every 4 hooks


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``: the peak) in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def rss_mb() -> float:
    return _status_mb("VmRSS")


def hwm_mb() -> float:
    """Peak RSS of this process so far."""
    return _status_mb("VmHWM")


def make_batch(k: int, hooks: int, seconds: float, backlog_days: float = 0.0, backlog: bool = False,
               dup_of: int | None = None, dup: float = 0.0) -> tuple[dict, int]:
    """({table: pa.Table}, last stream seq) for batch ``k``: ``hooks`` hooks
    whose ids and sequences depend only on (batch, hook): regenerating a
    batch gives the same rows (a redelivery)."""
    import pyarrow as pa
    from collector.columns import ARROW_SCHEMAS

    ids = [(k, h) for h in range(hooks)]
    if dup_of is not None and dup > 0:
        ids += [(dup_of, h) for h in range(max(1, int(hooks * dup)))]
    if backlog:  # an agent back after an outage: a few of its hooks from days ago
        ids += [(-k - 1, h) for h in range(max(1, hooks // 20))]
    n = len(ids)

    def t_of(b, h):  # node time of hook h of batch b (backlog: days earlier)
        base = T0_NS + int(abs(b) * seconds * 1e9) + h * 1000 + (h * 7919 % 60) * 10**9
        return base - int(backlog_days * 24 * HOUR_NS) if b < 0 else base

    seq = [abs(b) * 100_000 + h + (50_000 if b < 0 else 0) for b, h in ids]
    hook_id = [f"{(b & 0xffffffff):08x}{h:08x}" for b, h in ids]
    start = [t_of(b, h) for b, h in ids]
    gpu_id = [i for (b, h), i in zip(ids, hook_id) if h % 4 == 0]  # a GPU message every 4 hooks
    gpu_t = [t for (b, h), t in zip(ids, start) if h % 4 == 0]
    cols = {
        "hook_runs": {"hook_id": hook_id, "start_ts": start, "stream_seq": seq,
                      "end_ts": [t + 5 * 10**9 for t in start], "received_ts": start},
        "script_runs": {"span_id": [f"{i}s{j}" for i in hook_id for j in range(8)],
                        "hook_id": [i for i in hook_id for _ in range(8)],
                        "start_ts": [t + j * 10**8 for t in start for j in range(8)],
                        "stream_seq": [s for s in seq for _ in range(8)], "idx": [j for _ in ids for j in range(8)]},
        "journal": {"chain": [f"c{i}" for i in hook_id for _ in range(18)], "seq": [j for _ in ids for j in range(18)],
                    "hook_id": [i for i in hook_id for _ in range(18)],
                    "record": [f'{{"chain":"c{i}","kind":"script_ended","seq":{j},"ts":{t + j},'
                               f'"v":1,"x":"{"y" * 200}"}}' for i, t in zip(hook_id, start) for j in range(18)]},
        "span_events": {"span_id": hook_id, "ts": start, "name": ["hookscope.output"] * n, "idx": [0] * n,
                        "attributes": ["{}"] * n},
        "gpu_samples": {"node": [f"n{i}" for i in gpu_id for _ in range(8)],
                        "ts": [t for t in gpu_t for _ in range(8)],
                        "gpu_index": [g for _ in gpu_id for g in range(8)]},
    }
    tables = {}
    for t, given in cols.items():
        sch = ARROW_SCHEMAS[t]
        m = len(next(iter(given.values())))
        arrays = []
        for f in sch:
            if f.name in given:
                v = given[f.name]
                arr = (pa.array(v, pa.int64()).cast(pa.timestamp("ns", tz="UTC")).cast(f.type, safe=False)
                       if pa.types.is_timestamp(f.type) else pa.array(v, f.type))
            elif pa.types.is_string(f.type):
                arr = pa.repeat(pa.scalar(f"{t}-{f.name}"), m)
            elif pa.types.is_timestamp(f.type):
                arr = pa.repeat(pa.scalar(T0_NS // 1000, f.type), m)
            elif pa.types.is_integer(f.type) or pa.types.is_floating(f.type):
                arr = pa.repeat(pa.scalar(1, f.type), m)
            elif pa.types.is_boolean(f.type):
                arr = pa.repeat(pa.scalar(False), m)
            else:
                arr = pa.nulls(m, f.type)
            arrays.append(arr)
        tables[t] = pa.Table.from_arrays(arrays, schema=sch)
    return tables, max(seq)


def expected_rows(hooks: int, batches: int, backlog_every: int) -> dict:
    n_back = sum(1 for k in range(batches) if backlog_every and k % backlog_every == backlog_every - 1)
    hk = hooks * batches + max(1, hooks // 20) * n_back
    gpu = 8 * (((hooks + 3) // 4) * batches + ((max(1, hooks // 20) + 3) // 4) * n_back)
    return {"hook_runs": hk, "script_runs": 8 * hk, "journal": 18 * hk, "span_events": hk, "gpu_samples": gpu}


def child(args) -> None:
    import collector.store
    from collector.snapshot import snapshot_dir
    from collector.store import Store

    if args.checkpoint_mb:  # the store's WAL size between checkpoints (its memory/time trade)
        collector.store.CHECKPOINT_WAL_BYTES = int(args.checkpoint_mb) << 20

    hooks = args.batch_hooks
    per_batch = hooks * ROWS_PER_HOOK
    batches = max(10, args.rows // per_batch)
    st = Store(args.child, consumer="bench", snapshot_interval=1.0, memory_limit=args.memory_limit,
               threads=args.threads)
    tenth = max(1, batches // 10)
    times, rss, nfiles = [], [], []
    stored = 0
    for k in range(batches):
        back = bool(args.backlog_every) and k % args.backlog_every == args.backlog_every - 1
        tables, last = make_batch(k, hooks, args.seconds_per_batch, args.backlog_days, back,
                                  dup_of=k - 5 if k >= 5 else None, dup=args.dup)
        n = sum(tb.num_rows for tb in tables.values())
        t0, c0 = time.perf_counter(), time.process_time()
        st.commit(tables, last)
        times.append((time.perf_counter() - t0, n, time.process_time() - c0))
        st.maybe_snapshot()
        stored += n
        if k % tenth == tenth - 1 or k == batches - 1:
            mem = dict(st.con.execute("SELECT tag, memory_usage_bytes / 1048576 FROM duckdb_memory()").fetchall())
            rss.append((round(rss_mb()), round(mem.get("BASE_TABLE", 0)), round(mem.get("ART_INDEX", 0), 1),
                        round(mem.get("IN_MEMORY_TABLE", 0))))
            d = snapshot_dir(args.child)
            nfiles.append(len(os.listdir(d)) if os.path.isdir(d) else 0)
    st.snapshot()
    counts = st.counts()
    st.close()

    def rate(part, i=0):
        return sum(p[1] for p in part) / sum(p[i] for p in part)
    print(json.dumps({"batches": batches, "rss_mb": rss, "files": nfiles, "counts": counts,
                      "expected": expected_rows(hooks, batches, args.backlog_every),
                      "first": rate(times[:tenth]), "last": rate(times[-tenth:]),
                      "cpu_first": rate(times[:tenth], 2), "cpu_last": rate(times[-tenth:], 2),
                      "cpu_tenths": [rate(times[i * tenth:(i + 1) * tenth], 2) for i in range(len(times) // tenth)],
                      "commit_s": sum(t[0] for t in times), "hwm_mb": hwm_mb()}))


def run(tree: str | None, rows: int, args, tmp: str, checkpoint_mb: str = "") -> dict:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = tree + os.pathsep + env.get("PYTHONPATH", "")
    db = os.path.join(tmp, ("baseline" if tree else "this") + checkpoint_mb + ".duckdb")
    cmd = [sys.executable, os.path.abspath(__file__), "--rows", str(rows), "--child", db,
           "--memory-limit", args.memory_limit, "--batch-hooks", str(args.batch_hooks),
           "--seconds-per-batch", str(args.seconds_per_batch), "--dup", str(args.dup),
           "--backlog-every", str(args.backlog_every), "--backlog-days", str(args.backlog_days),
           "--threads", str(args.threads)] + (["--checkpoint-mb", checkpoint_mb] if checkpoint_mb else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree or None)
    if out.returncode:
        raise SystemExit(f"{'baseline' if tree else 'this tree'} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(name: str, r: dict) -> None:
    ok = all(r["counts"][t] == n for t, n in r["expected"].items())
    print(f"{name}: {sum(r['counts'][t] for t in r['expected']):,} rows ({'exact' if ok else 'WRONG'}: "
          f"{ {t: r['counts'][t] for t in r['expected']} } vs {r['expected']}), {r['batches']} batches")
    print(f"  at each tenth, MB: RSS {[x[0] for x in r['rss_mb']]}")
    print(f"    of which DuckDB's cache of stored blocks (BASE_TABLE, evictable): {[x[1] for x in r['rss_mb']]}")
    print(f"    RSS minus that cache: {[x[0] - x[1] for x in r['rss_mb']]}")
    print(f"    key index (ART_INDEX): {[x[2] for x in r['rss_mb']]}")
    print(f"    rows not yet checkpointed (IN_MEMORY_TABLE): {[x[3] for x in r['rss_mb']]}")
    print(f"  snapshot dir files at each tenth: {r['files']}")
    print(f"  rows/s first tenth {r['first']:,.0f}, last tenth {r['last']:,.0f} ({r['last'] / r['first']:.2f}x); "
          f"commit time {r['commit_s']:.0f} s")
    print(f"  rows per CPU-second of commit: first tenth {r['cpu_first']:,.0f}, last tenth {r['cpu_last']:,.0f} "
          f"({r['cpu_last'] / r['cpu_first']:.2f}x); peak RSS {r['hwm_mb']:.0f} MB")
    if r.get("cpu_tenths"):  # a baseline tree's child may not report them
        print(f"  rows per CPU-second of commit, each tenth: {[round(x) for x in r['cpu_tenths']]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--baseline", help="source tree of the version-1 store to run side by side")
    ap.add_argument("--baseline-rows", type=int, default=None)
    ap.add_argument("--memory-limit", default="1GB")
    ap.add_argument("--batch-hooks", type=int, default=500)
    ap.add_argument("--seconds-per-batch", type=float, default=600.0)
    ap.add_argument("--dup", type=float, default=0.02)
    ap.add_argument("--backlog-every", type=int, default=50)
    ap.add_argument("--backlog-days", type=float, default=14.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--checkpoint-mb", default="",
                    help="this tree once per value (comma list) of store.CHECKPOINT_WAL_BYTES in MB, "
                         "e.g. 16,64; default: the store's own")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a)
        return
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        if a.baseline:
            report(f"baseline ({a.baseline})", run(a.baseline, a.baseline_rows or a.rows, a, tmp))
        if a.child is None and "," in a.checkpoint_mb:
            for mb in a.checkpoint_mb.split(","):
                report(f"this tree, checkpoint every {mb} MB of WAL", run(None, a.rows, a, tmp, mb.strip()))
        else:
            report("this tree", run(None, a.rows, a, tmp, a.checkpoint_mb))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Sizing (issue 14): rows, bytes, RAM and cores for a cluster of N nodes.

Measures a small simulated day through the collector's REAL write path, then
extrapolates linearly to the node counts asked for (default 4,096 and 20,000).

Measured here, on ``--sim-nodes`` nodes, ``--sim-hours`` of hooks and
``--sim-gpu-hours`` of GPU sampling of the workload below (messages made by
the project's generators, tests/collector/gen.py and emitter.otlp, as the
agent makes them):

* every message goes through ``collector.fetched.build_batch`` (decode,
  identity and Msg-Id checks, Arrow), ``collector.archive.Archive.write``
  (Parquet, zstd, fsync) and ``collector.store.Store.commit`` (DuckDB,
  ``collector.dedup``); hook messages and GPU messages each into their own
  archive and store, so that bytes and CPU are known per kind;
* rows per message of each kind, per table;
* Parquet bytes per row per table after ``collector.compact.compact`` (one
  sorted file per table and day: what a year of archive looks like), and as
  written (one file per batch);
* DuckDB live-file bytes per row (file after CHECKPOINT, minus an empty
  store's file);
* CPU (all threads, user+sys) per message of each kind, and per span.

Extrapolated (linear in nodes and jobs; printed as such): rows/day, archive
bytes/day and /year, live-store bytes, the collector's RAM, and store version
1's key-index RAM (for comparison) after ``--live-days``
of history (the live store keeps everything today: no retention), and the
peak load of a burst in which every node runs its prolog (and its tasks their
TaskProlog) within ``--burst-s`` seconds, on top of the steady GPU stream,
against the collector's end-to-end throughput (``--collector-spans-s``: the
figure tests/bench/bench_collector.py measured, docs/collector.md
"Performance"; it is NOT re-measured here).  The key index's RAM per row is
``--index-bytes-per-row`` (tests/bench/bench_dedup.py at 5 M rows); DuckDB's
own ``duckdb_memory()`` figure at this small scale is printed beside it.

Not modelled: chain-head messages (at most one per chain per
``head_interval_s`` = 60 s when its chain moved), node events, dead letters,
output excerpts of failing scripts longer than one line.  Runs much smaller
than the defaults overstate CPU per message (each batch has fixed costs) and
bytes per row (Parquet footers, DuckDB blocks).

    .venv/bin/python tests/bench/bench_sizing.py                 # ~1 min: docs/collector.md "Sizing"
    .venv/bin/python tests/bench/bench_sizing.py --nodes 4096,20000 --jobs-per-node-day 48
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the repo's packages and tests.*

import duckdb  # noqa: E402

from collector import schema  # noqa: E402
from collector.archive import Archive  # noqa: E402
from collector.compact import compact  # noqa: E402
from collector.fetched import build_batch  # noqa: E402
from collector.store import Store  # noqa: E402
from emitter import contract as C  # noqa: E402
from emitter import otlp  # noqa: E402
from tests.bench.collector_stages import _FakeMsg  # noqa: E402
from tests.collector.gen import Node  # noqa: E402

DAY0 = 1_768_435_200 * 10**9  # 2026-01-15 00:00 UTC: a closed day, so compaction takes it
CLUSTER = "gpu1"
KINDS = ("hook", "gpu")
STAGES = ("decode+Arrow", "Parquet", "DuckDB")


def options(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    w = p.add_argument_group("workload (per node unless said)")
    w.add_argument("--jobs-per-node-day", type=float, default=24, help="jobs started on each node a day")
    w.add_argument("--nodes-per-job", type=int, default=1, help="nodes per job (slurmctld hooks run once a job)")
    w.add_argument("--prolog-scripts", type=int, default=8, help="scripts in prolog.d (Prolog)")
    w.add_argument("--epilog-scripts", type=int, default=4, help="scripts in epilog.d (Epilog)")
    w.add_argument("--ctld-scripts", type=int, default=2, help="scripts of PrologSlurmctld and of EpilogSlurmctld")
    w.add_argument("--tasks-per-node", type=int, default=8,
                   help="tasks per node per job step; each runs TaskProlog and TaskEpilog (0: not wrapped)")
    w.add_argument("--task-scripts", type=int, default=1, help="scripts of TaskProlog and of TaskEpilog")
    w.add_argument("--steps-per-job", type=int, default=1, help="job steps per job")
    w.add_argument("--fail-rate", type=float, default=0.01, help="fraction of hooks whose 4th script fails")
    w.add_argument("--gpus-per-node", type=int, default=8)
    w.add_argument("--gpu-interval-s", type=float, default=10, help="the agent's gpu_interval_s")
    s = p.add_argument_group("scale")
    s.add_argument("--nodes", default="4096,20000", help="node counts to extrapolate to")
    s.add_argument("--sim-nodes", type=int, default=16, help="nodes simulated (measured)")
    s.add_argument("--sim-hours", type=float, default=24, help="hours of hooks simulated")
    s.add_argument("--sim-gpu-hours", type=float, default=1, help="hours of GPU sampling simulated")
    s.add_argument("--batch", type=int, default=2048, help="messages per batch (the collector's fetch)")
    s.add_argument("--live-days", type=int, default=365, help="days of history the live store holds")
    s.add_argument("--index-bytes-per-row", type=float, default=50,
                   help="store version 1's key RAM per live row (tests/bench/bench_dedup.py: ~50)")
    s.add_argument("--memory-limit-gb", type=float, default=1.0,
                   help="the collector's --memory-limit (DuckDB's cache; store version 2's RAM does not grow "
                        "with history: docs/benchmarks.md \"Bounded dedup\")")
    s.add_argument("--base-ram-mb", type=float, default=500,
                   help="collector RAM besides DuckDB (docs/collector.md Memory: 300-500 MB)")
    s.add_argument("--burst-s", type=float, default=60, help="every node runs its prolog within this")
    s.add_argument("--collector-spans-s", type=float, default=14024,
                   help="one collector's end-to-end spans/s (bench_collector.py, docs/collector.md)")
    s.add_argument("--out", default=None, help="work directory (default: a temporary one, removed)")
    return p.parse_args(argv)


def hook_msg(node: Node, ts: int, context: str, n_scripts: int, fail: bool, job_id: int,
             gpus: int = 0, attested_uid: int | None = None):
    """(subject, msg_id, payload, spans) of one hook file, as the agent ships it."""
    _, recs = node.hook(job_id=str(job_id), context=context, n_scripts=n_scripts, ts=ts,
                        fail_index=min(3, n_scripts - 1) if fail else None)
    snaps = [{"index": g, "uuid": f"GPU-{node.node}-{g}", "model": "H100", "vendor": "nvidia",
              "source": "nvml", "job_id": str(job_id), "ts": ts,
              "metrics": {C.M_GPU_UTILIZATION: 0.0, C.M_GPU_MEMORY_USAGE: 2**20, C.M_GPU_POWER: 70.0,
                          C.M_GPU_TEMPERATURE: 35.0}} for g in range(gpus)]
    req = otlp.fitted_trace(recs, gpu_snapshots=snaps)
    if attested_uid is not None:  # the agent's per-owner spool attestation
        for rs in req.resource_spans:
            otlp._attrs(rs.resource.attributes, {C.A_ATTESTED_UID: attested_uid})
    spans = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
    return (C.subject(C.SIGNAL_SPANS, node.cluster, node.node),
            C.message_id(node.cluster, node.node, C.SIGNAL_SPANS, otlp.records_key(req)),
            req.SerializeToString(), spans)


def gpu_msg(node: Node, ts: int, gpus: int, job_id: int, rng: random.Random):
    """One sampling round of a busy node, at NVML's own granularity (integer %,
    MiB, mW, degrees C): constant values would compress to nothing."""
    samples = [{"index": g, "uuid": f"GPU-{node.node}-{g}", "model": "NVIDIA H100 80GB HBM3",
                "vendor": "nvidia", "source": "nvml", "job_id": str(job_id),
                "metrics": {C.M_GPU_UTILIZATION: rng.randint(60, 100) / 100,
                            C.M_GPU_MEMORY_USAGE: rng.randint(40_000, 79_000) * 2**20,
                            C.M_GPU_MEMORY_LIMIT: 81_559 * 2**20,
                            C.M_GPU_POWER: rng.randint(300_000, 700_000) / 1000,
                            C.M_GPU_TEMPERATURE: float(rng.randint(45, 80)),
                            C.M_GPU_XID: 0, C.M_GPU_ECC_DBE: 0}} for g in range(gpus)]
    payload = otlp.encode_metrics(samples, node=node.node, cluster=node.cluster, ts=ts)
    return (C.subject(C.SIGNAL_METRICS, node.cluster, node.node),
            C.message_id(node.cluster, node.node, C.SIGNAL_METRICS, hashlib.sha256(payload).hexdigest()),
            payload, 0)


def simulate(a):
    """Messages of the simulated window, time-ordered per kind: {kind: [(ts, subj, mid, payload, spans)]}."""
    out = {"hook": [], "gpu": []}
    window = int(a.sim_hours * 3600 * 10**9)
    period = int(86400 * 10**9 / a.jobs_per_node_day)
    ctld = Node("slurmctld", CLUSTER)
    rng = random.Random(14)
    job, n_fail = 1000, 0

    def fail():
        nonlocal n_fail
        n_fail += 1
        return a.fail_rate > 0 and n_fail % max(1, round(1 / a.fail_rate)) == 0

    for i in range(a.sim_nodes):
        root, user = Node(f"gpu{i:05d}", CLUSTER), Node(f"gpu{i:05d}", CLUSTER)
        t = DAY0 + (i * period) // a.sim_nodes  # jobs on different nodes start at different times
        while t + period <= DAY0 + window:
            job += 1
            hooks = [(t, root, "prolog_slurmd", a.prolog_scripts, a.gpus_per_node, None),
                     (t + period - 2 * 10**9, root, "epilog_slurmd", a.epilog_scripts, a.gpus_per_node, None)]
            for s in range(a.steps_per_job):
                step = t + 10**9 + s * (period // max(1, a.steps_per_job))
                for _ in range(a.tasks_per_node):
                    hooks.append((step, user, "prolog_task", a.task_scripts, 0, 1000))
                    hooks.append((step + period // max(1, a.steps_per_job) // 2, user, "epilog_task",
                                  a.task_scripts, 0, 1000))
            if job % a.nodes_per_job == 0:
                hooks.append((t - 10**9, ctld, "prolog_slurmctld", a.ctld_scripts, 0, 64030))
                hooks.append((t + period - 10**9, ctld, "epilog_slurmctld", a.ctld_scripts, 0, 64030))
            for ts, node, ctx, n, gpus, uid in hooks:
                out["hook"].append((ts,) + hook_msg(node, ts, ctx, n, fail(), job, gpus, uid))
            t += period
    step, gpu_window = int(a.gpu_interval_s * 10**9), int(a.sim_gpu_hours * 3600 * 10**9)
    for i in range(a.sim_nodes):
        node = Node(f"gpu{i:05d}", CLUSTER)
        for ts in range(DAY0 + (i * step) // a.sim_nodes, DAY0 + gpu_window, step):
            out["gpu"].append((ts,) + gpu_msg(node, ts, a.gpus_per_node, 1000 + i, rng))
    for k in out:
        out[k].sort(key=lambda m: m[0])
    return out


def write_kind(msgs, root, batch):
    """Every message through decode + Parquet + DuckDB into its own archive and
    store: rows per table, CPU seconds per stage, DuckDB's ART memory."""
    archive = Archive(os.path.join(root, "archive"), consumer="sizing", fsync=True)
    store = Store(os.path.join(root, "live.duckdb"), consumer="sizing")
    rows = dict.fromkeys(schema.ARCHIVE_TABLES, 0)
    cpu = dict.fromkeys(STAGES, 0.0)
    for i in range(0, len(msgs), batch):
        fake = []
        for seq, (ts, subj, mid, payload, _) in enumerate(msgs[i:i + batch], i + 1):
            m = _FakeMsg(subj, payload, seq, ts + 10**8)  # received 100 ms after it happened
            m.headers = {C.HDR_SCHEMA: "1", C.HDR_MSG_ID: mid}
            fake.append(m)
        c0 = time.process_time()  # every thread of the process: archive pool and DuckDB too
        b, (parts, tables) = build_batch(fake, "sizing", True, C.MAX_MESSAGE_BYTES)
        c1 = time.process_time()
        archive.write(parts, b.first_seq, b.last_seq)
        c2 = time.process_time()
        store.commit(tables, b.last_seq)
        c3 = time.process_time()
        for stage, dt in zip(STAGES, (c1 - c0, c2 - c1, c3 - c2)):
            cpu[stage] += dt
        for tabs in parts.values():
            for t, tb in tabs.items():
                rows[t] += tb.num_rows
    art = None
    try:  # what DuckDB itself reports for the key indexes, at this (small) scale
        art = store.con.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory() "
                                "WHERE tag = 'ART_INDEX'").fetchone()[0]
    except duckdb.Error:
        pass
    store.close(snapshot=False)
    archive.close()
    return rows, cpu, art


def dir_bytes(d):
    """(bytes, files) of a table's data files; the 0-row schema file left out."""
    total = files = 0
    for dp, _, fs in os.walk(d):
        if "date=1970-01-01" in dp:
            continue
        for f in fs:
            if f.endswith(".parquet") and not f.startswith("."):
                total += os.path.getsize(os.path.join(dp, f))
                files += 1
    return total, files


def compact_all(arch):
    """compact() every table; the tables it fails on are named (their bytes stay as written)."""
    skip = []
    while True:
        try:
            compact(arch, today="2999-01-01", tables=[t for t in schema.ARCHIVE_TABLES if t not in skip])
            return skip
        except KeyError as exc:  # collector/compact.py has no sort order for this table
            skip.append(str(exc).strip("'"))


def empty_store_bytes(tmp):
    p = os.path.join(tmp, "empty.duckdb")
    Store(p, consumer="sizing").close(snapshot=False)
    return os.path.getsize(p)


def human(n):
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000


def measure(a, tmp):
    """Each kind of message in its own archive and store, so that bytes are known per kind."""
    t0 = time.perf_counter()
    msgs = simulate(a)
    m = dict(gen_s=time.perf_counter() - t0, msgs={}, spans={}, rows={}, cpu={}, art={},
             as_written={}, compacted={}, live={}, uncompacted=set())
    empty = empty_store_bytes(tmp)
    for k in KINDS:
        root = os.path.join(tmp, k)
        m["msgs"][k], m["spans"][k] = len(msgs[k]), sum(x[4] for x in msgs[k])
        m["rows"][k], m["cpu"][k], m["art"][k] = write_kind(msgs[k], root, a.batch)
        arch = os.path.join(root, "archive")
        m["as_written"][k] = {t: dir_bytes(os.path.join(arch, t)) for t in schema.ARCHIVE_TABLES}
        m["uncompacted"].update(compact_all(arch))
        m["compacted"][k] = {t: dir_bytes(os.path.join(arch, t))[0] for t in schema.ARCHIVE_TABLES}
        m["live"][k] = os.path.getsize(os.path.join(root, "live.duckdb")) - empty
    m["wall_s"] = time.perf_counter() - t0
    return m


def report(a, m):
    sim = m["msgs"]
    print("WORKLOAD: " + ", ".join(f"{k}={v}" for k, v in vars(a).items()
                                   if k not in ("nodes", "out", "collector_spans_s", "index_bytes_per_row",
                                                "base_ram_mb", "live_days")))
    print(f"MEASURED ({a.sim_nodes} nodes: {a.sim_hours:g} h of hooks = {sim['hook']:,} hook messages, "
          f"{m['spans']['hook']:,} spans; {a.sim_gpu_hours:g} h of GPU sampling = {sim['gpu']:,} messages; "
          f"generated in {m['gen_s']:.1f} s, total {m['wall_s']:.1f} s):")
    for k in KINDS:
        cpu = sum(m["cpu"][k].values())
        print(f"  {k} message: CPU (all threads, user+sys) {cpu / max(1, sim[k]) * 1e6:,.0f} us = "
              + ", ".join(f"{st} {m['cpu'][k][st] / max(1, sim[k]) * 1e6:,.0f}" for st in STAGES)
              + (f"; {cpu / max(1, m['spans'][k]) * 1e6:.1f} us/span ({m['spans'][k] / max(1, sim[k]):.1f} "
                 "spans a message)" if m["spans"][k] else ""))
        keyed = sum(m["rows"][k][t] for t in schema.ARCHIVE_TABLES if t != "raw")
        print(f"  {k}: DuckDB live file {m['live'][k] / max(1, keyed):.1f} B/row over {keyed:,} keyed rows"
              + (f"; DuckDB's ART_INDEX memory {m['art'][k] / max(1, keyed):.1f} B/row at this small scale"
                 if m["art"][k] else ""))
    if m["uncompacted"]:
        print(f"  NOTE: collector.compact.compact() fails on {sorted(m['uncompacted'])} (KeyError): "
              "their bytes below are as written, not compacted")
    print("  | table | rows/hook msg | rows/GPU msg | Parquet B/row compacted (hook, GPU) | as written (files) |")
    print("  |---|---|---|---|---|")
    for t in schema.ARCHIVE_TABLES:
        if not any(m["rows"][k][t] for k in KINDS):
            continue
        per = {k: m["rows"][k][t] / max(1, sim[k]) for k in KINDS}
        bpr = ", ".join(f"{m['compacted'][k][t] / m['rows'][k][t]:.1f}" if m["rows"][k][t] else "-" for k in KINDS)
        wr = ", ".join(f"{m['as_written'][k][t][0] / m['rows'][k][t]:.1f} ({m['as_written'][k][t][1]})"
                       if m["rows"][k][t] else "-" for k in KINDS)
        print(f"  | {t} | {per['hook']:.2f} | {per['gpu']:.2f} | {bpr} | {wr} |")
    nodes = [int(x) for x in a.nodes.split(",")]
    print("\nEXTRAPOLATED (linear in nodes and jobs from the figures above):")
    print("| | " + " | ".join(f"{n:,} nodes" for n in nodes) + " |")
    print("|---|" + "---|" * len(nodes))
    for label, fn in extrapolations(a, m):
        print(f"| {label} | " + " | ".join(fn(n) for n in nodes) + " |")


def per_day(a, nodes):
    """Messages a day of each kind for ``nodes`` nodes (the workload's own arithmetic)."""
    node_jobs = nodes * a.jobs_per_node_day
    hooks = node_jobs * (2 + 2 * a.tasks_per_node * a.steps_per_job) + 2 * node_jobs / a.nodes_per_job
    return {"hook": hooks, "gpu": nodes * 86400 / a.gpu_interval_s}


def extrapolations(a, m):
    sim, keyed = m["msgs"], [t for t in schema.ARCHIVE_TABLES if t != "raw"]
    cpu_msg = {k: sum(m["cpu"][k].values()) / max(1, sim[k]) for k in KINDS}

    def scale(n, k):  # simulated messages -> a day of ``n`` nodes
        return per_day(a, n)[k] / max(1, sim[k])

    def rows(n, tables):
        return sum(m["rows"][k][t] * scale(n, k) for k in KINDS for t in tables)

    def arch_day(n, tables=schema.ARCHIVE_TABLES):
        return sum(m["compacted"][k][t] * scale(n, k) for k in KINDS for t in tables)

    def peak(n):
        """Every node's prolog (+ its tasks' TaskProlog, + slurmctld's) within burst_s, on top of
        the steady GPU stream: (hook msgs/s, spans/s, cores of CPU)."""
        hooks = n * (1 + a.tasks_per_node) + n / a.nodes_per_job
        spans = (n * (1 + a.prolog_scripts + a.tasks_per_node * (1 + a.task_scripts))
                 + n / a.nodes_per_job * (1 + a.ctld_scripts))
        cores = hooks / a.burst_s * cpu_msg["hook"] + n / a.gpu_interval_s * cpu_msg["gpu"]
        return hooks / a.burst_s, spans / a.burst_s, cores

    def steady(n):
        return sum(per_day(a, n)[k] * cpu_msg[k] for k in KINDS) / 86400

    hook_keyed = [t for t in keyed if t != "gpu_samples"]
    out = [(f"{t} rows/day", (lambda t: lambda n: f"{rows(n, [t]) / 1e6:,.2f} M")(t))
           for t in schema.ARCHIVE_TABLES if any(m["rows"][k][t] for k in KINDS)]
    spans_msg = m["spans"]["hook"] / max(1, sim["hook"])
    return out + [
        ("hook messages/day (spans/day)", lambda n: f"{per_day(a, n)['hook'] / 1e6:,.2f} M "
                                                     f"({per_day(a, n)['hook'] * spans_msg / 1e6:,.1f} M)"),
        ("GPU messages/day", lambda n: f"{per_day(a, n)['gpu'] / 1e6:,.2f} M"),
        ("archive/day, compacted", lambda n: human(arch_day(n))),
        ("archive/year, compacted", lambda n: human(arch_day(n) * 365)),
        ("  of which raw (every message verbatim)", lambda n: human(arch_day(n, ("raw",)) * 365)),
        ("  of which gpu_samples", lambda n: human(arch_day(n, ("gpu_samples",)) * 365)),
        ("archive files/day, compacted", lambda n: f"{sum(1 for t in schema.ARCHIVE_TABLES if arch_day(1, [t]))}"
                                                   " (one per table with rows, per cluster)"),
        (f"live store after {a.live_days} d (no retention)",
         lambda n: human(sum(m["live"][k] * scale(n, k) for k in KINDS) * a.live_days)),
        ("collector RAM, any history (store version 2: base + --memory-limit)",
         lambda n: human(a.base_ram_mb * 1e6 + a.memory_limit_gb * 1e9)),
        # Store version 1 (before issue 14) kept a key index of every row in RAM:
        # what the bounded dedup removed, for comparison.
        ("store version 1: key-index RAM per day of history", lambda n: human(rows(n, keyed) * a.index_bytes_per_row)),
        ("  the same without gpu_samples", lambda n: human(rows(n, hook_keyed) * a.index_bytes_per_row)),
        (f"store version 1: key-index RAM after {a.live_days} d ({a.index_bytes_per_row:g} B/row)",
         lambda n: human(rows(n, keyed) * a.live_days * a.index_bytes_per_row)),
        ("store version 1: collector RAM, 7 d of live history (base + keys)",
         lambda n: human(a.base_ram_mb * 1e6 + 7 * rows(n, keyed) * a.index_bytes_per_row)),
        ("CPU cores, steady (day average)", lambda n: f"{steady(n):.2f}"),
        (f"peak: prolog burst in {a.burst_s:g} s: hook msgs/s, spans/s",
         lambda n: f"{peak(n)[0]:,.0f}, {peak(n)[1]:,.0f}"),
        ("peak: CPU cores (measured us/message)", lambda n: f"{peak(n)[2]:.2f}"),
        (f"peak: collectors ({a.collector_spans_s:,.0f} spans/s and 1 core of work each)",
         lambda n: f"{max(math.ceil(peak(n)[1] / a.collector_spans_s), math.ceil(peak(n)[2]))}"),
    ]


def main(argv=None):
    a = options(argv)
    tmp = a.out or tempfile.mkdtemp(prefix="hookscope-sizing-")
    os.makedirs(tmp, exist_ok=True)
    try:
        report(a, measure(a, tmp))
    finally:
        if not a.out:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

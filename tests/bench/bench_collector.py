"""Collector benchmark (apart from `make test`): JetStream -> DuckDB + Parquet, with acks.

    .venv/bin/python tests/bench/bench_collector.py            # full
    .venv/bin/python tests/bench/bench_collector.py --quick    # ~20 s
    # against the last commit, side by side on the same server and messages:
    mkdir -p /tmp/base && git archive HEAD | tar -x -C /tmp/base
    .venv/bin/python tests/bench/bench_collector.py --baseline-tree /tmp/base \
        --no-burst --no-freshness --no-sync-cost

In ONE run, on a real nats-server and real files under /tmp:
  * ceiling A: bare nats-py JetStream pull consume (fetch + ack, nothing else);
  * ceiling B: DuckDB Arrow insert (``Store.commit`` of the same rows, prebuilt: collector.dedup);
  * ours: the collector end to end (decode, Parquet archive with fsync, DuckDB
    commit, acks), printed as spans/s and as a fraction of the lower ceiling;
    ceiling B, ours and the baseline each end with a CHECKPOINT of their
    store, timed in (the rows a checkpoint interval has not written yet are
    work still owed, and the trees' intervals differ);
  * baseline (``--baseline-tree``): another tree's collector on the same
    messages, in alternating rounds, as a ratio;
  * stages: us per span of each step (fetch+ack, headers, decode, identity
    checks, Arrow, Parquet+fsync, DuckDB commit), one after the other;
  * burst: 4096 nodes x (prolog + epilog) x 8 scripts published at once (by a
    process of its own, as the nodes are; ``--burst-publisher loop``: from the
    collector's event loop, as before), time
    until all of it is queryable in the live store (goal < 5 s), with the
    redeliveries and nats-server's slow-consumer cuts; with ``--baseline-tree``
    the baseline's collector takes the same burst too, on its own server;
  * freshness: steady load at a fraction of our rate, publish -> visible in the
    published read-only snapshot, p50/p99 (goal p99 < 1 s in the live store);
  * durability cost: the same messages published (acks awaited, 256 in flight)
    and collected on a server with JetStream's default fsync (2 min) and on
    one with ``sync_interval: always`` (hookscope's default), as a ratio.
Goals (issue 14): >= 2x the baseline in the same run and >= 60 % of the lower
ceiling; moonshot 100,000 spans/s.  Below 24,000 spans/s is a defect (on a
quiet machine: the figures scale with the load other work puts on it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the repo's packages and tests.*

import duckdb  # noqa: E402

from collector.config import CollectorConfig  # noqa: E402
from collector.consumer import Collector, build_batch  # noqa: E402
from collector.embedded import NatsServer  # noqa: E402
from collector.store import Store  # noqa: E402
from emitter import contract as C  # noqa: E402
from emitter.natsio import ensure_streams  # noqa: E402
from tests.collector.gen import Node, hook_message  # noqa: E402

from tests.bench.collector_stages import SPANS_PER_MSG, _FakeMsg, stage_profile  # noqa: E402


def make_messages(n_msgs, n_nodes=256, fail_every=10, context="prolog_slurmd", job_base=1000):
    nodes = [Node(f"node{i:04d}") for i in range(n_nodes)]
    out = []
    for i in range(n_msgs):
        node = nodes[i % n_nodes]
        subj, mid, payload, _ = hook_message(node, job_id=str(job_base + i // n_nodes), context=context,
                                             fail_index=3 if fail_every and i % fail_every == 0 else None)
        out.append((subj, mid, payload))
    return out


async def publish(url, msgs, wait_acks=False):
    import nats
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    await ensure_streams(js)
    t0 = time.perf_counter()
    if wait_acks:
        futs = []
        for subj, mid, payload in msgs:
            futs.append(js.publish(subj, payload, headers={C.HDR_MSG_ID: mid, C.HDR_SCHEMA: "1"}))
            if len(futs) >= 256:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)
    else:
        for subj, mid, payload in msgs:
            await nc.publish(subj, payload, headers={C.HDR_MSG_ID: mid, C.HDR_SCHEMA: "1"})
        await nc.flush(timeout=30)
        # wait until the stream holds them all: with sync_interval: always the
        # server fsyncs each message, which on a loaded disk takes minutes
        want = len(msgs)
        deadline = time.monotonic() + 60 + len(msgs) / 50
        while True:
            info = await js.stream_info(C.STREAM_NAME)
            if info.state.messages >= want:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"the stream holds {info.state.messages} of {want} messages after "
                                 f"{time.perf_counter() - t0:.0f}s")
            await asyncio.sleep(0.05)
    dt = time.perf_counter() - t0
    await nc.close()
    return dt


async def raw_consume(url, n, batch=1024):
    """Ceiling A: fetch + ack only, on its own durable consumer."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    await js.add_consumer(C.STREAM_NAME, ConsumerConfig(durable_name="bench-raw", ack_policy=AckPolicy.EXPLICIT,
                                                        max_ack_pending=20000))
    psub = await js.pull_subscribe_bind("bench-raw", stream=C.STREAM_NAME)
    got = 0
    t0 = time.perf_counter()
    while got < n:
        msgs = await psub.fetch(batch, timeout=2)
        for m in msgs:
            _ = m.data
            await m.ack()
        got += len(msgs)
    await nc.flush()
    dt = time.perf_counter() - t0
    await nc.close()
    return dt


def duckdb_ceiling(msgs, tmp, batch=1024):
    """Ceiling B: Store.commit (collector.dedup) of prebuilt Arrow batches into a fresh file."""
    now = time.time_ns()
    fake = [_FakeMsg(s, p, i + 1, now) for i, (s, _, p) in enumerate(msgs)]
    arrows = [build_batch(fake[i:i + batch], "bench", False, C.MAX_MESSAGE_BYTES)
              for i in range(0, len(fake), batch)]
    store = Store(os.path.join(tmp, "ceiling.duckdb"), consumer="bench")
    t0 = time.perf_counter()
    for b, (parts, tables) in arrows:
        store.commit(tables, b.last_seq)
    store.con.execute("CHECKPOINT")  # what the store still owes (see run_ours)
    dt = time.perf_counter() - t0
    store.close(snapshot=False)
    # python-side cost (decode + Arrow) for the record
    t1 = time.perf_counter()
    for i in range(0, len(fake), batch):
        build_batch(fake[i:i + batch], "bench", True, C.MAX_MESSAGE_BYTES)
    return dt, time.perf_counter() - t1


def run_ours(url, tmp, n, batch, tag="ours"):
    db = os.path.join(tmp, f"{tag}.duckdb")
    cfg = CollectorConfig(nats_url=url, db=db, archive=os.path.join(tmp, f"{tag}-archive"),
                          instance=tag, durable=f"bench-{tag}", batch=batch, snapshot_interval=5.0)
    col = Collector(cfg)

    cpu = {}

    async def go():
        import resource
        await col.connect()
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        m0 = time.thread_time()  # this thread runs the collector's loop: fetch, decode, Arrow, ack
        t0 = time.perf_counter()
        task = asyncio.create_task(col.run())
        while col.metrics.snapshot()["messages"] < n:
            await asyncio.sleep(0.01)
        # The rows not checkpointed yet are work the store still owes, and
        # how much is owed depends on the tree's checkpoint interval: timed
        # in, for every tree alike (an 8,000-message run is about one
        # 256 MB interval).  The writer is idle: every batch is acked.
        await asyncio.get_running_loop().run_in_executor(col._writer, col.store.con.execute, "CHECKPOINT")
        dt = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu["main"] = time.thread_time() - m0
        cpu["s"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        col.stop()
        await task
        await col.close_nats()
        return dt

    dt = asyncio.run(go())
    us = cpu["s"] / (n * SPANS_PER_MSG) * 1e6
    main_us = cpu["main"] / (n * SPANS_PER_MSG) * 1e6
    # the main thread holds the GIL for its Python work: its share bounds the rate
    print(f"  collector main thread CPU: {main_us:.1f} us/span = {cpu['main'] / dt:.0%} of the wall time "
          f"(the writer's and archiver's threads and DuckDB's: {us - main_us:.1f} us/span)")
    print(f"  collector CPU (all threads, user+sys): {cpu['s']:.2f}s = {us:.1f} us/span -> "
          f"{1e6 / us:,.0f} spans/s per fully available core (load-independent estimate)")
    print("  collector stages (us per span, wall, threads overlap):",
          {k: round(v / (n * SPANS_PER_MSG) * 1e6, 1) for k, v in col.metrics.snapshot()["stage_seconds"].items()})
    col.close()
    con = duckdb.connect(db, read_only=True)
    counts = {t: con.execute(f"select count(*) from {t}").fetchone()[0] for t in ("hook_runs", "script_runs", "journal")}
    con.close()
    return dt, counts


_BASELINE = """
import json, sys
tree, root, url, tmp, n, batch, tag = sys.argv[1:8]
sys.path.insert(0, tree)
import collector.consumer, collector.config  # noqa: E401  (the baseline's, before the bench's path)
sys.path.insert(1, root)
import importlib.util
spec = importlib.util.spec_from_file_location("bench_collector", root + "/tests/bench/bench_collector.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)
run_ours = bench.run_ours
if url == "burst":  # the burst on its own server: n is the node count
    print("RESULT " + json.dumps(list(bench.burst(tmp, n_nodes=int(n), tag=tag, publisher=batch))))
else:
    dt, counts = run_ours(url, tmp, int(n), int(batch), tag=tag)
    print("RESULT " + json.dumps({"dt": dt, "counts": counts}))
"""


def _in_tree(tree, url, tmp, n, batch, tag):
    """Run this bench's ``run_ours`` (or, with url "burst", ``burst``) with the
    collector of another source tree, in a child process; its RESULT."""
    import json
    import subprocess
    out = subprocess.run([sys.executable, "-c", _BASELINE, os.path.abspath(tree), str(ROOT), url, tmp,
                          str(n), str(batch), tag], capture_output=True, text=True, timeout=3600)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
        if "\u2595" not in line:  # not one of DuckDB's progress bars
            print("  [baseline] " + line.strip())
    raise SystemExit(f"baseline run failed:\n{out.stdout}\n{out.stderr[-3000:]}")


def run_baseline(tree, url, tmp, n, batch, tag="baseline"):
    """The collector of another source tree (e.g. the last commit, unpacked
    with ``git archive``), end to end on the same server: its own durable,
    the same messages.  Returns its seconds."""
    res = _in_tree(tree, url, tmp, n, batch, tag)
    return res["dt"], res["counts"]


#: The burst's publisher, a process of its own (as the nodes are): it
#: connects, says "ready", waits for "go", publishes every message (core NATS,
#: as the agents' burst arrives), waits until the stream holds them all and
#: prints how long that took.
_PUBLISHER = """
import asyncio, pickle, sys, time
sys.path.insert(0, sys.argv[1])
import nats
from emitter import contract as C
async def main():
    with open(sys.argv[3], "rb") as f:
        msgs = pickle.load(f)
    nc = await nats.connect(sys.argv[2])
    js = nc.jetstream(timeout=10)
    print("ready", flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    for subj, mid, payload in msgs:
        await nc.publish(subj, payload, headers={C.HDR_MSG_ID: mid, C.HDR_SCHEMA: "1"})
    await nc.flush(timeout=60)
    while (await js.stream_info(C.STREAM_NAME)).state.messages < len(msgs):
        await asyncio.sleep(0.05)
    print(f"published {time.perf_counter() - t0}", flush=True)
    await nc.close()
asyncio.run(main())
"""


async def _publish_apart(url, msgs, path):
    """Start the publisher process and wait for its "ready"; it publishes
    when it reads a line.  Its start-up (imports, connect) is before the clock."""
    import pickle
    with open(path, "wb") as f:
        pickle.dump(msgs, f)
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", _PUBLISHER, str(ROOT), url, path,
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    if (await proc.stdout.readline()).strip() != b"ready":
        raise SystemExit(f"burst publisher failed (status {await proc.wait()})")
    return proc


def burst(tmp, n_nodes=4096, scripts=8, tag="burst", publisher="process"):
    """4096 nodes x prolog+epilog published at once; time until queryable.
    (seconds, publish seconds, messages, script_runs stored, redeliveries,
    slow-consumer lines in nats-server's log).  ``publisher``: "process" (a
    process of its own, as the nodes are) or "loop" (the collector's own
    event loop, as before session 6: its publishing then competes with the
    collector's main thread)."""
    srv = NatsServer(store_dir=os.path.join(tmp, f"nats-{tag}")).start()
    try:
        nodes = [Node(f"node{i:04d}") for i in range(n_nodes)]
        msgs = []
        for ctx in ("prolog_slurmd", "epilog_slurmd"):
            for node in nodes:  # the same nodes: the epilog continues each node's chain
                subj, mid, payload, _ = hook_message(node, job_id="7", context=ctx)
                msgs.append((subj, mid, payload))
        db = os.path.join(tmp, f"{tag}.duckdb")
        cfg = CollectorConfig(nats_url=srv.url, db=db, archive=os.path.join(tmp, f"{tag}-archive"),
                              instance=tag, batch=2048, snapshot_interval=5.0)
        col = Collector(cfg)

        async def go():
            await col.connect()
            task = asyncio.create_task(col.run())
            if publisher == "process":
                proc = await _publish_apart(srv.url, msgs, os.path.join(tmp, f"{tag}-msgs.pickle"))
                t0 = time.perf_counter()
                proc.stdin.write(b"go\n")
                await proc.stdin.drain()
            else:
                t0 = time.perf_counter()
                pub = await publish(srv.url, msgs)
            while col.metrics.snapshot()["messages"] < len(msgs):
                await asyncio.sleep(0.01)
            dt = time.perf_counter() - t0
            if publisher == "process":
                line = (await proc.stdout.readline()).decode().split()
                await proc.wait()
                pub = float(line[1]) if len(line) == 2 and line[0] == "published" else float("nan")
            # deliveries beyond one per message: redeliveries (after ack_wait or a nak)
            ci = await col.js.consumer_info(C.STREAM_NAME, cfg.durable)
            col.stop()
            await task
            await col.close_nats()
            return dt, (pub, ci.delivered.consumer_seq - ci.delivered.stream_seq)

        dt, (pub, redelivered) = asyncio.run(go())
        col.close()
        con = duckdb.connect(db, read_only=True)
        n = con.execute("select count(*) from script_runs").fetchone()[0]
        con.close()
        log = os.path.join(tmp, f"nats-{tag}", "nats-server.log")
        slow = open(log, errors="replace").read().count("Slow Consumer") if os.path.exists(log) else 0
        return dt, pub, len(msgs), n, redelivered, slow
    finally:
        srv.stop()


def freshness(tmp, rate_msgs, seconds):
    """Steady load; publish time -> row visible to the collector's own reads, via ingest lag."""
    import nats
    srv = NatsServer(store_dir=os.path.join(tmp, "nats-fresh")).start()
    try:
        db = os.path.join(tmp, "fresh.duckdb")
        cfg = CollectorConfig(nats_url=srv.url, db=db, archive=os.path.join(tmp, "fresh-archive"),
                              instance="fresh", batch=1024, snapshot_interval=1.0, fetch_timeout=0.2)
        col = Collector(cfg)
        lat = []

        async def go():
            await col.connect()
            task = asyncio.create_task(col.run())
            nc = await nats.connect(srv.url)
            js = nc.jetstream()
            node = Node("fresh01")
            t_end = time.monotonic() + seconds
            sent = {}
            i = 0
            while time.monotonic() < t_end:
                subj, mid, payload, recs = hook_message(node)
                ack = await js.publish(subj, payload, headers={C.HDR_MSG_ID: mid})
                sent[ack.seq] = time.perf_counter()
                i += 1
                await asyncio.sleep(1.0 / rate_msgs)
            # committed seq -> time: poll the metrics' last_seq (commit is what makes it queryable)
            while col.metrics.snapshot()["messages"] < i:
                await asyncio.sleep(0.005)
            col.stop()
            await task
            await col.close_nats()
            await nc.close()
            return sent

        # measure commit time per seq by wrapping batch_done
        done = {}
        orig = col.metrics.batch_done

        def hook(batch, took):
            t = time.perf_counter()
            for s in range(batch.first_seq, batch.last_seq + 1):
                done[s] = t
            orig(batch, took)

        col.metrics.batch_done = hook
        sent = asyncio.run(go())
        col.close()
        for s, t in sent.items():
            if s in done:
                lat.append(done[s] - t)
        lat.sort()
        return lat
    finally:
        srv.stop()


def sync_cost(msgs, tmp, batch):
    """(publish s, collect s) per fsync policy, same messages, same run."""
    out = {}
    for sync in (None, "always"):
        tag = f"sync-{sync or 'default'}"
        srv = NatsServer(store_dir=os.path.join(tmp, f"nats-{tag}"), sync=sync).start()
        try:
            pub = asyncio.run(publish(srv.url, msgs, wait_acks=True))
            dt, _ = run_ours(srv.url, tmp, len(msgs), batch, tag=tag)
        finally:
            srv.stop()
        out[sync or "default"] = (pub, dt)
    return out


def bursts(args, tmp):
    """The burst with our collector and, with ``--baseline-tree``, the
    baseline's, each on its own fresh server, one after the other."""
    nn = 1024 if args.quick else 4096
    runs = [("ours", lambda: burst(tmp, n_nodes=nn, tag="burst-ours", publisher=args.burst_publisher))]
    if args.baseline_tree:
        runs.insert(0, ("baseline", lambda: _in_tree(args.baseline_tree, "burst", tmp, nn, args.burst_publisher,
                                                     "burst-base")))
    took = {}
    for who, fn in runs:
        dt, pubt, nm, ns, redelivered, slow = fn()
        took[who] = dt
        print(f"burst ({who}): {nn} nodes x prolog+epilog x 8 scripts = {nm} msgs / {nm * 9} spans: "
              f"all queryable {dt:.2f}s after the first publish (publishing took {pubt:.2f}s); "
              f"script_runs={ns} (expect {nm * 8}); {redelivered} redeliveries, {slow} slow-consumer "
              f"disconnects in nats-server's log; goal < 5 s")
    if "baseline" in took:
        print(f"burst: ours {took['ours']:.2f}s vs baseline {took['baseline']:.2f}s = "
              f"{took['baseline'] / took['ours']:.2f}x faster")


def _args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small run (~20 s)")
    ap.add_argument("--messages", type=int, default=None, help="hook messages (9 spans each)")
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--no-burst", action="store_true")
    ap.add_argument("--burst-publisher", choices=("process", "loop"), default="process",
                    help="who publishes the burst: a process of its own (as the nodes are; default) or the "
                         "collector's own event loop (as before session 6)")
    ap.add_argument("--no-freshness", action="store_true")
    ap.add_argument("--no-sync-cost", action="store_true")
    ap.add_argument("--baseline-tree", metavar="DIR",
                    help="also run the collector of this source tree on the same messages, side by side "
                         "(e.g. DIR from: git archive HEAD | tar -x -C DIR)")
    ap.add_argument("--rounds", type=int, default=2, help="with --baseline-tree: alternating rounds")
    return ap.parse_args()


def throughput(args, n, msgs, tmp):
    """Ceilings, ours (and the baseline tree's) end to end, and the stages, in one run."""
    srv = NatsServer(store_dir=os.path.join(tmp, "nats")).start()
    try:
        # acked: published with core NATS and no flow control, 16,000
        # messages left only 11,198 in the stream (the server dropped the rest)
        pub = asyncio.run(publish(srv.url, msgs, wait_acks=True))
        print(f"published in {pub:.2f}s")
        ra = asyncio.run(raw_consume(srv.url, n, args.batch))
        raw_rate = n * SPANS_PER_MSG / ra
        duck, py = duckdb_ceiling(msgs, tmp, args.batch)
        duck_rate = n * SPANS_PER_MSG / duck
        # With a baseline tree: rounds alternate which runs first (the load
        # of a shared machine drifts); each run has its own durable.
        ours_dts, base_dts = [], []
        for r in range(args.rounds if args.baseline_tree else 1):
            order = ("base", "ours") if r % 2 == 0 else ("ours", "base")
            for who in order if args.baseline_tree else ("ours",):
                if who == "base":
                    dt, base_counts = run_baseline(args.baseline_tree, srv.url, tmp, n, args.batch,
                                                   tag=f"baseline{r}")
                    base_dts.append(dt)
                else:
                    dt, counts = run_ours(srv.url, tmp, n, args.batch, tag=f"ours{r}")
                    ours_dts.append(dt)
        ours_dt = sum(ours_dts) / len(ours_dts)
        base_dt = sum(base_dts) / len(base_dts) if base_dts else None
    finally:
        srv.stop()
    stages = stage_profile(msgs[:min(n, 4 * args.batch)], tmp, args.batch)
    stages = {"fetch+ack (ceiling A)": 1e6 / raw_rate, **stages}
    print("stages, one after the other on one thread (us per span):")
    for k, v in stages.items():
        print(f"  {k:28s} {v:7.2f}")
    print(f"  {'sum':28s} {sum(stages.values()):7.2f} = {1e6 / sum(stages.values()):,.0f} spans/s "
          "if nothing overlapped")
    ours = n * SPANS_PER_MSG / ours_dt
    ceiling = min(raw_rate, duck_rate)
    print(f"ceiling A  nats-py JetStream fetch+ack : {raw_rate:>10,.0f} spans/s ({n / ra:,.0f} msgs/s)")
    print(f"ceiling B  DuckDB Arrow Store.commit  : {duck_rate:>10,.0f} spans/s")
    print(f"(python decode+Arrow alone             : {n * SPANS_PER_MSG / py:>10,.0f} spans/s)")
    print(f"ours       end to end (archive+commit+ack): {ours:>10,.0f} spans/s  "
          f"= {ours / ceiling:.0%} of the lower ceiling ({ours / 12000:.1f}x the OTel Collector's "
          f"~12k spans/s/CPU)")
    if base_dt is not None:
        base = n * SPANS_PER_MSG / base_dt
        print(f"baseline   {args.baseline_tree} end to end: {base:>10,.0f} spans/s = {base / ceiling:.0%} of the "
              f"lower ceiling; ours = {ours / base:.2f}x the baseline (mean time of {args.rounds} alternating "
              f"rounds; per round: {', '.join(f'{b / o:.2f}x' for o, b in zip(ours_dts, base_dts))})")
        assert base_counts == counts, (base_counts, counts)
    print(f"stored: {counts}")
    expect_scripts = sum(1 for i in range(n) if i % 10) * 8 + sum(1 for i in range(n) if not i % 10) * 4
    assert counts["hook_runs"] == n, counts
    assert counts["script_runs"] == expect_scripts, (counts, expect_scripts)
    verdict = [f"{ours / ceiling:.0%} of the lower ceiling (goal >= 60 %)"]
    if base_dt is not None:
        verdict.append(f"{base_dt / ours_dt:.2f}x the baseline (goal >= 2x)")
    verdict.append("DEFECT (< 24,000 spans/s)" if ours < 24000 else
                   "moonshot met (>= 100k)" if ours >= 100000 else ">= 24k, below the 100k moonshot")
    print("verdict: " + "; ".join(verdict))


def main():
    args = _args()
    n = args.messages or (4000 if args.quick else 20000)
    tmp = tempfile.mkdtemp(prefix="hookscope-bench-collector-")
    print(f"# bench_collector: {n} messages x {SPANS_PER_MSG} spans, batch {args.batch}, tmp {tmp}")
    try:
        t = time.perf_counter()
        msgs = make_messages(n)
        print(f"generated {n} messages ({sum(len(m[2]) for m in msgs) / n:.0f} B avg) in {time.perf_counter() - t:.1f}s")
        throughput(args, n, msgs, tmp)
        if not args.no_burst:
            bursts(args, tmp)
        if not args.no_freshness:
            lat = freshness(tmp, rate_msgs=200, seconds=5 if args.quick else 15)
            if lat:
                p50 = lat[len(lat) // 2]
                p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
                print(f"freshness at 200 hooks/s (1,800 spans/s): publish-ack -> committed in the live store "
                      f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms (n={len(lat)}); the read-only "
                      f"snapshot adds up to its interval (1 s here)")
        if not args.no_sync_cost:
            m = msgs[:min(n, 4000)]
            cost = sync_cost(m, tmp, args.batch)
            (pd, cd), (pa, ca) = cost["default"], cost["always"]
            print(f"durability cost ({len(m)} msgs), sync_interval: always vs the server default (2 min): "
                  f"publish with acks {len(m) / pa:,.0f} vs {len(m) / pd:,.0f} msgs/s = {pd / pa:.2f}x the "
                  f"throughput; collector end to end {ca:.2f}s vs {cd:.2f}s = {cd / ca:.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

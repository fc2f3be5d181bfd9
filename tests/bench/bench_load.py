#!/usr/bin/env python3
"""Load: 4,096 simulated nodes start one job at once; time until the collector
has everything, and check nothing is lost or doubled.

Real parts: nats-server (JetStream, file storage), the real ``hookscope
collect`` process, the runner's own journal writer (emitter.journal.Journal:
the exact records, files and hash chain ``hookscope run`` writes) and the real
agent code (emitter.agent.Agent, one per simulated node, sharing one NATS
connection per worker process).  A few worker processes each drive many
journals, as the issue asks: spawning 4,096 real runners and agents would
measure this 2-core machine's fork rate, not hookscope.

Side by side in the same run: the bare JetStream publish of the same number of
messages of the same size (nats-py, one connection per worker, waiting for
each PubAck), so the ratio says what the hookscope layers cost.

Usage: bench_load.py [--nodes 4096] [--workers 4] [--scripts 4] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from collector.embedded import NatsServer  # noqa: E402
from emitter import contract as c  # noqa: E402

CLUSTER = "load"


def sim_hook(journal_dir: str, node: str, job_id: int, n_scripts: int, context: str = "prolog_slurmd",
             fail_index: int | None = None, cluster: str = CLUSTER) -> int:
    """Write one hook invocation's journal file exactly as the runner does; returns records written."""
    from emitter.journal import Journal

    j = Journal(journal_dir, node=node, cluster=cluster, fsync=False)
    t0 = time.time_ns()
    job = {k: None for k in c.JOB_ENV}
    job.update(job_id=str(job_id), user="alice", uid="1000", partition="gpu", nodelist=node,
               cluster=cluster, gpus="0,1,2,3,4,5,6,7")
    j.append(c.K_HOOK_STARTED, {c.R_CONTEXT: context, c.R_LAYOUT: "slurm", c.R_DIRS: ["/etc/slurm/prolog.d"],
                                c.R_TIMEOUT_S: 0, c.R_JOB: job, c.R_WARNINGS: []})
    n = 1
    status, failed = 0, None
    for i in range(n_scripts):
        path = f"/etc/slurm/prolog.d/{10 * (n_scripts - i):02d}-check.sh"
        j.append(c.K_SCRIPT_STARTED, {c.R_INDEX: i, c.R_PATH: path, c.R_SHA256: "0" * 64, c.R_SIZE: 120,
                                      c.R_MODE: 0o100755, c.R_UID: 0, c.R_MTIME: t0})
        rc = 1 if i == fail_index else 0
        j.append(c.K_SCRIPT_ENDED, {c.R_INDEX: i, c.R_PATH: path, c.R_EXIT: rc, c.R_SIGNAL: None,
                                    c.R_TIMED_OUT: False, c.R_REFUSED: None, c.R_DURATION_NS: 2_000_000,
                                    c.R_OUTPUT: "GPU 3 missing\n" if rc else None, c.R_OUTPUT_TRUNCATED: False})
        n += 2
        if rc:
            status, failed = rc, i
            break
    j.append(c.K_HOOK_ENDED, {c.R_STATUS: status, c.R_N_SCRIPTS: n_scripts, c.R_FAILED_INDEX: failed,
                              c.R_DURATION_NS: time.time_ns() - t0, c.R_WARNINGS: []})
    j.close()
    return n + 1


def make_agents(url: str, base: Path, nodes: list[str], log=lambda *_: None):
    """One emitter.agent.Agent per simulated node, sharing one JetStream publisher."""
    from emitter.agent import Agent, AgentSettings

    shared = None
    agents = []
    for node in nodes:
        s = AgentSettings.resolve({}, env={}, nats=url, journal=str(base / node), node=node, cluster=CLUSTER,
                                  gpu="none", create_streams=False)
        a = Agent(s, log=log, publisher=shared)
        shared = shared or a.publisher
        agents.append(a)
    return agents


def _worker(url, base, nodes, n_scripts, go, done_q):
    """Wait for the common start, write each node's prolog journal, ship them all."""
    agents = make_agents(url, Path(base), nodes)
    go.wait()
    t0 = time.monotonic()
    recs = sum(sim_hook(str(Path(base) / n), n, 1000, n_scripts) for n in nodes)
    t_written = time.monotonic() - t0
    left = 0
    for a in agents:
        shipped, waiting = a.run_once()
        left += waiting
    done_q.put((recs, t_written, time.monotonic() - t0, left))
    for a in agents:
        try:
            a.close()
        except Exception:
            pass


def _bare_worker(url, n_msgs, size, go, done_q):
    import nats

    async def run():
        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3)
        js = nc.jetstream(timeout=10)
        payload = os.urandom(size)
        go.wait()
        t0 = time.monotonic()
        for i in range(n_msgs):
            await js.publish(f"bare.{os.getpid()}", payload, headers={c.HDR_MSG_ID: f"{os.getpid()}-{i}"})
        done_q.put(time.monotonic() - t0)
        await nc.close()

    asyncio.run(run())


async def consumer_state(url: str):
    import nats

    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        js = nc.jetstream(timeout=5)
        si = await js.stream_info(c.STREAM_NAME)
        try:
            ci = await js.consumer_info(c.STREAM_NAME, c.DURABLE_CONSUMER)
            return si.state.messages, si.state.last_seq, ci.num_pending, ci.num_ack_pending, ci.ack_floor.stream_seq
        except Exception:
            return si.state.messages, si.state.last_seq, None, None, 0
    finally:
        await nc.close()


def wait_collected(url: str, want_msgs: int, timeout: float) -> float:
    """Until the durable consumer acked every message (acks follow the DuckDB commit)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            msgs, last, pending, ack_pending, floor = asyncio.run(consumer_state(url))
            if msgs >= want_msgs and pending == 0 and ack_pending == 0 and floor >= last:
                return time.monotonic()
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"collector did not ack everything within {timeout}s")


def store_counts(db: Path) -> dict:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        q = lambda s: con.execute(s).fetchone()[0]  # noqa: E731
        return {"hook_runs": q("SELECT count(*) FROM hook_runs"), "script_runs": q("SELECT count(*) FROM script_runs"),
                "journal": q("SELECT count(*) FROM journal"),
                "dups": q("SELECT count(*) - count(DISTINCT (cluster, node, chain, seq)) FROM journal"),
                "dead_letters": q("SELECT count(*) FROM dead_letters")}
    finally:
        con.close()


def ensure_streams(url: str, replicas: int = 1) -> None:
    from emitter import natsio

    async def go():
        nc = await natsio.connect(natsio.NatsOptions(servers=url))
        try:
            await natsio.ensure_streams(nc.jetstream(timeout=10), replicas=replicas)
        finally:
            await natsio.close(nc)

    asyncio.run(go())


def start_collector(url: str, db: Path, archive: Path, log: Path, extra=()):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    f = open(log, "ab")
    p = subprocess.Popen([sys.executable, "-m", "emitter.cli", "collect", "--nats", url, "--db", str(db),
                          "--archive", str(archive), *extra], stdout=f, stderr=subprocess.STDOUT, env=env,
                         start_new_session=True, cwd=ROOT)
    f.close()
    return p


def stop(p, timeout=60):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--scripts", type=int, default=4, help="scripts per prolog")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--keep", help="work directory to keep (default: a temp dir, removed)")
    a = ap.parse_args(argv)
    work = Path(a.keep or tempfile.mkdtemp(prefix="hookscope-load-"))
    work.mkdir(parents=True, exist_ok=True)
    nodes = [f"node{i:05d}" for i in range(a.nodes)]
    chunks = [nodes[i::a.workers] for i in range(a.workers)]
    ctx = mp.get_context("fork")
    srv = NatsServer(store_dir=work / "nats").start()
    coll = None
    try:
        ensure_streams(srv.url)
        coll = start_collector(srv.url, work / "store.duckdb", work / "archive", work / "collector.log")
        # --- hookscope: journals -> agents -> JetStream -> collector
        go, q = ctx.Event(), ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(srv.url, str(work / "journals"), ch, a.scripts, go, q))
                 for ch in chunks]
        for p in procs:
            p.start()
        time.sleep(2.0)  # let every worker connect before the job starts
        t0 = time.monotonic()
        go.set()
        results = [q.get(timeout=a.timeout) for _ in procs]
        t_shipped = max(r[2] for r in results)
        for p in procs:
            p.join(30)
        left = sum(r[3] for r in results)
        t_done = wait_collected(srv.url, a.nodes, a.timeout) - t0
        records = sum(r[0] for r in results)
        stop(coll)
        coll = None
        counts = store_counts(work / "store.duckdb")
        # --- baseline: bare JetStream publish of as many messages of the average size
        stream_bytes = sum(f.stat().st_size for f in (work / "nats").rglob("*.blk"))
        size = max(200, stream_bytes // max(1, a.nodes))
        async def bare_stream():
            import nats
            from nats.js.api import StreamConfig
            nc = await nats.connect(srv.url)
            await nc.jetstream().add_stream(StreamConfig(name="BARE", subjects=["bare.>"]))
            await nc.close()
        asyncio.run(bare_stream())
        go2, q2 = ctx.Event(), ctx.Queue()
        bprocs = [ctx.Process(target=_bare_worker, args=(srv.url, len(ch), size, go2, q2)) for ch in chunks]
        for p in bprocs:
            p.start()
        time.sleep(1.0)
        b0 = time.monotonic()
        go2.set()
        bare = [q2.get(timeout=a.timeout) for _ in bprocs]
        t_bare = time.monotonic() - b0
        for p in bprocs:
            p.join(30)
    finally:
        if coll is not None:
            stop(coll)
        srv.stop()
    lost = a.nodes - counts["hook_runs"]
    print(f"load: {a.nodes} nodes x 1 prolog ({a.scripts} scripts), {a.workers} worker processes, "
          f"{records} journal records")
    print(f"  journals written (runner's writer):       {max(r[1] for r in results):6.2f} s")
    print(f"  journals written + shipped by the agents: {t_shipped:6.2f} s  (files left in journals: {left})")
    print(f"  job start -> collector has everything:    {t_done:6.2f} s")
    print(f"  bare JetStream publish of {a.nodes} x {size} B:   {t_bare:6.2f} s  (max worker {max(bare):.2f} s)")
    print(f"  ratio hookscope / bare:                   {t_done / t_bare:6.1f} x")
    print(f"  stored: hook_runs={counts['hook_runs']} script_runs={counts['script_runs']} "
          f"journal={counts['journal']} (journaled {records}) duplicates={counts['dups']} "
          f"dead_letters={counts['dead_letters']}")
    ok = lost == 0 and counts["dups"] == 0 and counts["journal"] == records and left == 0
    print("  RESULT: " + ("nothing lost, nothing doubled" if ok else f"DEFECT: lost {lost} hook runs"))
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

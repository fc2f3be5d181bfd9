#!/usr/bin/env python3
"""Soak: N minutes (default 30) at a target of 2,000 hook runs/s.

Generator processes write hook journals (simjournal.SimNode: the runner's
byte format and hash chain, without its per-hook set-up cost, which real nodes
pay on their own CPUs) into the journals of a few simulated nodes at the target rate;
one real ``hookscope agent`` process per node journal ships them; one real
``hookscope collect`` process stores them.  Every ``--sample`` seconds it
records agent and collector RSS (/proc/PID/status VmRSS), consumer lag
(messages in the stream not yet acked by the durable consumer) and the journal
backlog (files waiting on the nodes).  At the end: achieved rate, RSS at start
and end per process, the RSS slope over the second half (memory must not grow
without bound), lag, CPU per process, an exact stored-vs-journaled count, and a
verification of every node's stored hash chain.

Usage: bench_soak.py [--minutes 30] [--rate 2000] [--agents 4] [--generators 2] [--scripts 2] [--memory-limit 2GB]
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
sys.path.insert(0, str(ROOT))  # run as a script: the repo's packages and tests.*

from tests.bench.bench_load import (CLUSTER, consumer_state, ensure_streams, start_collector,  # noqa: E402
                                    stop, store_counts)
from tests.bench.simjournal import SimNode  # noqa: E402
from collector.embedded import NatsServer  # noqa: E402
from emitter.contract import CHAIN_GENESIS  # noqa: E402


def rss_mb(pid: int) -> float:
    """RSS of a process and its children (a click command may fork helpers)."""
    total = 0
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_s(pid: int) -> float:
    """User+system CPU seconds of a live process (/proc/PID/stat fields 14, 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _generator(base: str, nodes: list[str], rate: float, seconds: float, n_scripts: int, counter, go):
    """Write hooks round-robin over ``nodes`` at ``rate``/s for ``seconds``."""
    sims = [SimNode(os.path.join(base, node), node, CLUSTER) for node in nodes]
    go.wait()
    t0 = time.monotonic()
    i = 0
    recs = 0
    while True:
        now = time.monotonic() - t0
        if now >= seconds:
            break
        due = int(now * rate) + 1
        # a generator slower than ``rate`` must still stop on time (and the
        # achieved rate is reported), not chase an ever-growing backlog
        end_batch = time.monotonic() + 0.5
        while i < due and time.monotonic() < end_batch:
            # Each job: a prolog, then its epilog on the same node (the agent's
            # GPU job map sees both, as on a real node); every 50th hook fails.
            job = i // 2
            recs += sims[job % len(sims)].hook(100000 + job, n_scripts, fail_index=0 if i % 50 == 0 else None,
                                               context="epilog_slurmd" if i % 2 else "prolog_slurmd")
            i += 1
        time.sleep(0.002)
    with counter.get_lock():
        counter.value += recs


def start_agent(url: str, journal: Path, node: str, log: Path):
    f = open(log, "ab")
    p = subprocess.Popen([sys.executable, "-m", "emitter.cli", "agent", "--nats", url, "--journal", str(journal),
                          "--node", node, "--cluster", CLUSTER, "--gpu", "none", "--no-create-streams"],
                         stdout=f, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         start_new_session=True, cwd=ROOT)
    f.close()
    return p


def backlog(base: Path) -> int:
    return sum(1 for _ in base.rglob("*.jsonl"))


def lag(url: str) -> int | None:
    try:
        msgs, last, pending, ack_pending, floor = asyncio.run(consumer_state(url))
        return last - floor
    except Exception:
        return None


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS over the second half of the run."""
    half = samples[len(samples) // 2:]
    if len(half) < 2:
        return 0.0
    n = len(half)
    mx = sum(t for t, _ in half) / n
    my = sum(v for _, v in half) / n
    den = sum((t - mx) ** 2 for t, _ in half) or 1.0
    return sum((t - mx) * (v - my) for t, v in half) / den * 60


def verify_chains(db: Path) -> dict:
    """Every node's stored chain links up with no gap: each record's ``prev`` is
    its predecessor's ``hash`` and seqs run 1, 2, 3... (in SQL: tens of millions
    of rows; hashes are recomputed by 'hookscope audit verify', not here)."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        bad, chains, n = con.execute("""
            SELECT count(*) FILTER (WHERE (ps IS NULL AND (seq <> 1 OR prev <> ?))
                                       OR (ps IS NOT NULL AND (seq <> ps + 1 OR prev <> ph))),
                   count(DISTINCT (cluster, node, chain)), count(*)
            FROM (SELECT cluster, node, chain, seq, prev,
                         lag(seq) OVER w AS ps, lag(hash) OVER w AS ph
                  FROM journal WINDOW w AS (PARTITION BY cluster, node, chain ORDER BY seq))""",
                                     [CHAIN_GENESIS]).fetchone()
    finally:
        con.close()
    return {"ok": bad == 0, "problems": bad, "checked": {"chains": chains, "records": n}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--rate", type=float, default=2000, help="target hook runs per second, all nodes together")
    ap.add_argument("--agents", type=int, default=4, help="simulated nodes, one real agent process each")
    ap.add_argument("--generators", type=int, default=2)
    ap.add_argument("--scripts", type=int, default=2, help="scripts per hook")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--keep")
    ap.add_argument("--memory-limit", help="the collector's --memory-limit (default: its own, half the RAM)")
    ap.add_argument("--spool-dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where the simulated nodes' journal spools go (default /dev/shm; '' = the work dir)")
    a = ap.parse_args(argv)
    if a.generators > a.agents:
        ap.error("--generators must not exceed --agents: each node's chain has exactly one writer")
    work = Path(a.keep or tempfile.mkdtemp(prefix="hookscope-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    # Each simulated node's spool would be on that node's own disk; here they
    # would share one disk with nats-server's file store and the DuckDB file,
    # so by default they live in tmpfs (the agents' reads and deletes are the same).
    spool_base = Path(a.spool_dir) if a.spool_dir else work
    journals = Path(tempfile.mkdtemp(prefix="hookscope-soak-spools-", dir=spool_base))
    nodes = [f"soak{i:03d}" for i in range(a.agents)]
    seconds = a.minutes * 60
    ctx = mp.get_context("fork")
    srv = NatsServer(store_dir=work / "nats").start()
    procs = {}
    samples: dict[str, list] = {}
    lags, backlogs = [], []
    try:
        ensure_streams(srv.url)
        procs["collector"] = start_collector(srv.url, work / "store.duckdb", work / "archive", work / "collector.log",
                                             ["--memory-limit", a.memory_limit] if a.memory_limit else [])
        for n in nodes:
            (journals / n).mkdir(parents=True, exist_ok=True)
            procs[f"agent-{n}"] = start_agent(srv.url, journals / n, n, work / f"agent-{n}.log")
        time.sleep(3.0)  # start-up, then the first RSS sample is the baseline
        counter, go = ctx.Value("q", 0), ctx.Event()
        gens = [ctx.Process(target=_generator, args=(str(journals), nodes[g::a.generators],
                                                     a.rate / a.generators, seconds, a.scripts, counter, go))
                for g in range(a.generators)]
        for g in gens:
            g.start()
        cpu0 = {name: cpu_s(p.pid) for name, p in procs.items()}
        cpu0["nats-server"] = cpu_s(srv.proc.pid)
        gen_cpu0 = sum(cpu_s(g.pid) for g in gens)
        t0 = time.monotonic()
        go.set()
        next_sample = 0.0
        gen_cpu = gen_cpu0
        while any(g.is_alive() for g in gens):
            gen_cpu = max(gen_cpu, sum(cpu_s(g.pid) for g in gens if g.is_alive()))
            el = time.monotonic() - t0
            if el >= next_sample:
                for name, p in procs.items():
                    samples.setdefault(name, []).append((el, rss_mb(p.pid)))
                lags.append((el, lag(srv.url)))
                backlogs.append((el, backlog(journals)))
                with open(work / "samples.tsv", "a") as f:  # survives a crash of this script
                    f.write("\t".join([f"{el:.0f}", f"lag={lags[-1][1]}", f"backlog={backlogs[-1][1]}"]
                                       + [f"{n}={v[-1][1]:.0f}MB" for n, v in samples.items()]) + "\n")
                next_sample += a.sample
            time.sleep(0.2)
        t_gen = time.monotonic() - t0
        cpu = {name: cpu_s(p.pid) for name, p in procs.items()}
        cpu["nats-server"] = cpu_s(srv.proc.pid)
        for g in gens:
            g.join(10)
        records = counter.value
        # drain: until the journals are empty and the consumer caught up
        t_end = time.monotonic() + 600
        while time.monotonic() < t_end and (backlog(journals) or (lag(srv.url) or 0) > 0):
            time.sleep(0.5)
        t_drain = time.monotonic() - t0 - t_gen
        for name, p in procs.items():
            samples.setdefault(name, []).append((time.monotonic() - t0, rss_mb(p.pid)))
        for p in procs.values():
            stop(p)
        counts = store_counts(work / "store.duckdb")
        chains = verify_chains(work / "store.duckdb")
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
        srv.stop()
    hooks = counts["hook_runs"]
    print(f"soak: {a.minutes:g} min target {a.rate:g} hook runs/s, {a.agents} nodes/agents, "
          f"{a.generators} generators, {a.scripts} scripts/hook, collector --memory-limit "
          f"{a.memory_limit or 'default'}")
    print(f"  achieved: {hooks} hook runs in {t_gen:.0f} s = {hooks / t_gen:.0f}/s written; "
          f"drain after the end {t_drain:.1f} s")
    for name, s in samples.items():
        print(f"  RSS {name:<16} start {s[0][1]:7.1f} MB  end {s[-1][1]:7.1f} MB  max {max(v for _, v in s):7.1f} MB  "
              f"2nd-half slope {slope_mb_per_min(s):+6.2f} MB/min")
    for name in ("collector", f"agent-{nodes[0]}"):
        s = samples[name]
        step = max(1, len(s) // 10)
        print(f"  RSS {name} over time: " + "  ".join(f"{t / 60:.0f}m {v:.0f}" for t, v in s[::step] + s[-1:]))
    lt = [(t, v) for t, v in lags if v is not None]
    if lt:
        step = max(1, len(lt) // 10)
        print("  consumer lag over time: " + "  ".join(f"{t / 60:.0f}m {v}" for t, v in lt[::step]))
    share = {name: (cpu[name] - cpu0.get(name, 0.0)) / t_gen for name in cpu}
    share["generators"] = (gen_cpu - gen_cpu0) / t_gen
    print("  CPU while writing (cores): " + ", ".join(f"{k} {v:.2f}" for k, v in share.items()))
    lv = [v for _, v in lags if v is not None]
    print(f"  consumer lag (msgs not yet acked): max {max(lv, default=0)}, last during run {lv[-1] if lv else 0}")
    print(f"  journal backlog (files on nodes): max {max((v for _, v in backlogs), default=0)}")
    ok = counts["journal"] == records and counts["dups"] == 0
    print(f"  stored journal records {counts['journal']} vs journaled {records}, duplicates {counts['dups']}: "
          + ("OK" if ok else "DEFECT"))
    print(f"  stored hash chains link with no gap: {'OK' if chains['ok'] else 'DEFECT'} "
          f"({chains['checked']['records']} records in {chains['checked']['chains']} chains, "
          f"{chains['problems']} broken links)")
    ok = ok and chains["ok"]
    shutil.rmtree(journals, ignore_errors=True)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

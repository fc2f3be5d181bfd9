"""The job page's data: every hook run of the job on the controller and its
nodes, the script runs, the audit trail, the GPU series over the job, and the
``why job`` verdict (queries/jobwhy.py: what Slurm did to the job, which
hook, script, version and output decided it, and what the retry did).

Split out of data.py, whose helpers it uses.
"""

from datetime import datetime, timedelta

from dashboards import common as D
from queries.audit import audit_job
from queries.jobwhy import why_job


def job_verdict(con, job_id):
    """The ``why job`` answer, or {"error": ...}: one job's analysis failing
    must not take its page down."""
    try:
        return why_job(con, job_id)
    except Exception as exc:  # noqa: BLE001 - shown on the page instead
        return {"job_id": str(job_id), "verdict": None, "error": f"why job failed: {exc}"}


def job_page(con, job_id):
    job_id = str(job_id).strip()
    hooks = D._rows(con, """
        SELECT hook_id, node, context, start_ts AS start, end_ts AS "end", epoch(start_ts) AS t0,
               epoch(coalesce(end_ts, start_ts)) AS t1, duration_ms, status, n_scripts, failed_index,
               runner_killed
        FROM hook_runs WHERE job_id = ? ORDER BY start_ts, node""", [job_id])
    if not hooks:
        raise D.NotFound(f"job {job_id} has no hook runs in the store")
    meta = D._one(con, f"""
        SELECT {", ".join(f"any_value({c}) AS {c}" for c in D.JOB_META)},
               min(start_ts) AS first_hook, max(coalesce(end_ts, start_ts)) AS last_hook,
               count(*) AS hook_runs, count(*) FILTER ({D._status_sql()}) AS failed_hooks,
               list(DISTINCT node ORDER BY node) AS nodes
        FROM hook_runs WHERE job_id = ?""", [job_id])
    meta["job_id"] = job_id
    scripts = D._rows(con, """
        SELECT hook_id, span_id, node, context, idx, path AS script, sha256, exit_code, signal,
               timed_out, refused, start_ts AS start, epoch(start_ts) AS t0,
               epoch(coalesce(end_ts, start_ts)) AS t1, duration_ms, user_name AS user, output,
               output_truncated
        FROM script_runs WHERE job_id = ? ORDER BY start_ts, node, idx""", [job_id])
    audit = audit_job(con, job_id)
    since = datetime.fromisoformat(meta["first_hook"].replace("Z", "+00:00")) - timedelta(minutes=1)
    until = datetime.fromisoformat(meta["last_hook"].replace("Z", "+00:00")) + timedelta(minutes=1)
    gpu = D._gpu_series(con, "job_id = ?", [job_id], since, until)
    if not gpu["gpus"]:
        # Samples not tagged with the job: the job's nodes over its lifetime.
        nodes = meta["nodes"]
        gpu = D._gpu_series(con, "list_contains(?, node)", [nodes], since, until)
    return {"page": "job", "job_id": job_id, "meta": meta, "hooks": hooks, "scripts": scripts,
            "audit": audit, "gpu": gpu, "why": D._jsonable(job_verdict(con, job_id))}

"""``make demo``: the example hook directories through the runner, recorded.

Two jobs under a realistic fake Slurm environment: a good one (prolog,
TaskProlog, epilog all pass) and one whose GPU health check finds an XID, as
it would on a node about to drain.  Everything is journaled into a fresh
directory and printed as a table.  Later issues extend ``main`` with the
agent, the collector and the queries; each step is a function for that.
"""

import os
import shutil
import sys
from pathlib import Path

from emitter import contract as c

EXAMPLES = Path(__file__).resolve().parent / "examples"
DIRS = {
    "prolog_slurmd": EXAMPLES / "prolog.d",
    "prolog_task": EXAMPLES / "task_prolog.d",
    "epilog_slurmd": EXAMPLES / "epilog.d",
}


def fake_env(context, job_id, user="alice", uid=None, partition="gpu", node="node001", **extra):
    """The environment slurmd gives a hook: SLURM_* variables and no PATH."""
    uid = os.getuid() if uid is None else uid
    env = {
        "SLURM_SCRIPT_CONTEXT": context,
        "SLURM_JOB_ID": str(job_id),
        "SLURM_JOB_USER": user,
        "SLURM_JOB_UID": str(uid),
        "SLURM_JOB_GID": str(uid),
        "SLURM_JOB_PARTITION": partition,
        "SLURM_JOB_NODELIST": node,
        "SLURM_CLUSTER_NAME": "demo",
        "SLURM_JOB_ACCOUNT": "research",
        "SLURM_JOB_NAME": "train-llm",
        "SLURM_RESTART_COUNT": "0",
        "SLURM_JOB_GPUS": "0,1",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "SLURMD_NODENAME": node,
    }
    if context in ("prolog_task", "epilog_task"):
        env["SLURM_STEP_ID"] = "0"
        env["SLURM_CPUS_PER_TASK"] = "8"
        env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
    env.update({k: str(v) for k, v in extra.items()})
    return env


def settings_for(journal_dir, **over):
    from emitter.config import runner_settings

    base = dict(journal_dir=str(journal_dir), timeout_s=10, passthrough=False, node="node001",
                cluster="demo", fsync=False)
    base.update(over)
    return runner_settings({}, **base)


def run_job(journal_dir, job_id, user, contexts=("prolog_slurmd", "prolog_task", "epilog_slurmd"),
            **extra_env):
    """Run the example hooks of one job; returns [(context, status)]."""
    from emitter import runner

    devnull = os.open(os.devnull, os.O_WRONLY)
    out = []
    try:
        for ctx in contexts:
            env = fake_env(ctx, job_id, user=user, **extra_env)
            status, _ = runner.run(settings_for(journal_dir), ctx, [str(DIRS[ctx])], env=env,
                                   stdout_fd=devnull, stderr_fd=devnull)
            out.append((ctx, status))
            if ctx == "prolog_slurmd" and status != 0:
                break  # slurmd drains the node and requeues the job: no task, no epilog
    finally:
        os.close(devnull)
    return out


def journal_records(journal_dir):
    """Every record of every journal file, in seq order, and the damage found."""
    from emitter.journal import read_records

    recs, damage = [], []
    for p in sorted(Path(journal_dir).glob("*" + c.JOURNAL_SUFFIX)):
        r, d = read_records(p)
        recs.extend(r)
        damage.extend(d)
    recs.sort(key=lambda r: r[c.R_SEQ])
    return recs, damage


def table(records):
    """A readable table: one line per hook and per script."""
    lines = [f"{'seq':>4}  {'job':>5}  {'context':<15} {'what':<28} {'status':>6}  {'ms':>7}  detail",
             "-" * 100]
    ctx = {}
    for r in records:
        k = r[c.R_KIND]
        if k == c.K_HOOK_STARTED:
            ctx[r[c.R_HOOK_ID]] = (r[c.R_CONTEXT], r[c.R_JOB].get("job_id") or "-")
            continue
        context, job = ctx.get(r[c.R_HOOK_ID], ("-", "-"))
        if k == c.K_SCRIPT_ENDED:
            detail = ""
            if r.get(c.R_TIMED_OUT):
                detail = "TIMED OUT "
            if r.get(c.R_REFUSED):
                detail += f"refused: {r[c.R_REFUSED]} "
            if r.get(c.R_EXPORTED):
                detail += "exported " + ",".join(r[c.R_EXPORTED]) + " "
            if r.get(c.R_OUTPUT):
                detail += "output: " + r[c.R_OUTPUT].strip().replace("\n", " | ")[:120]
            lines.append(f"{r[c.R_SEQ]:>4}  {job:>5}  {context:<15} {'  ' + os.path.basename(r[c.R_PATH]):<28} "
                         f"{r[c.R_EXIT]:>6}  {r[c.R_DURATION_NS] / 1e6:>7.1f}  {detail}")
        elif k == c.K_HOOK_ENDED:
            verdict = "ok" if r[c.R_STATUS] == 0 else c.DRAIN_REASON.get(context, "hook failed")
            lines.append(f"{r[c.R_SEQ]:>4}  {job:>5}  {context:<15} {'hook (' + str(r[c.R_N_SCRIPTS]) + ' scripts)':<28} "
                         f"{r[c.R_STATUS]:>6}  {r[c.R_DURATION_NS] / 1e6:>7.1f}  {verdict}")
    return "\n".join(lines)


def run_demo(out_dir="demo-out"):
    """Fresh journal under ``out_dir``, two jobs, returns (journal_dir, records, damage)."""
    journal_dir = Path(out_dir).resolve() / "journal"
    if journal_dir.exists():
        shutil.rmtree(journal_dir)
    import pwd

    # The job user must resolve here (30-job-user checks it): use our own.
    user = pwd.getpwuid(os.getuid()).pw_name
    run_job(journal_dir, 1001, user=user)
    run_job(journal_dir, 1002, user=user, GPU_HEALTH_FAKE_XID=79)
    recs, damage = journal_records(journal_dir)
    return journal_dir, recs, damage


def main(argv=None):
    journal_dir, recs, damage = run_demo()
    print(f"hookscope demo: example hooks run as Slurm would, journal in {journal_dir}\n")
    print(table(recs))
    seqs = [r[c.R_SEQ] for r in recs]
    ok = seqs == list(range(1, len(seqs) + 1)) and not damage
    print(f"\n{len(recs)} records, hash chain seq 1..{len(seqs)} {'intact' if ok else 'DAMAGED: ' + str(damage)}")
    print("job 1002's GPU check failed: slurmd would drain node001 with reason 'Prolog error' and hold the job.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

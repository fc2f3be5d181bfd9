"""Helpers for the agent tests: journals written by the real runner code,
real runner processes, and reading back what reached a real JetStream.

The command lines of the stages (runner, agent, collector) and hook dirs are
the pipeline's: tests.helpers.pipeline (run_cmd, agent_cmd, write_scripts)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from emitter import contract as c
from tests.helpers.pipeline import ROOT, run_cmd


def job_env(job_id, cluster="c1", **extra):
    """The whole environment of a hook of ``job_id`` as the agent tests run
    it: ours without SLURM_*, the job's SLURM_* and ``extra``, PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({"SLURM_JOB_ID": str(job_id), "SLURM_CLUSTER_NAME": cluster, "SLURM_JOB_USER": "alice",
                "SLURM_JOB_UID": "1000", "SLURM_JOB_PARTITION": "gpu"})
    env.update({k: str(v) for k, v in extra.items()})
    env["PYTHONPATH"] = str(ROOT)
    return env


def run_hook(hooks: Path, journal: Path, context="prolog_slurmd", node="n1", env=None, extra=(),
             timeout=30):
    """Really run `hookscope run` (the runner) and return the CompletedProcess."""
    return subprocess.run(run_cmd(hooks, journal, context, node, "--no-strict", *extra), env=env or job_env(1),
                          capture_output=True, text=True, timeout=timeout)


def write_hooks_fast(journal: Path, n: int, node="n1", cluster="c1", scripts=2, job_base=1000):
    """n complete hook files through the runner's own Journal writer (no
    subprocess per hook), for the volume tests."""
    from emitter.journal import Journal

    for i in range(n):
        j = Journal(journal, node=node, cluster=cluster, fsync=False)
        job = {k: None for k in c.JOB_ENV}
        job.update(job_id=str(job_base + i), cluster=cluster)
        j.append(c.K_HOOK_STARTED, {c.R_CONTEXT: "prolog_slurmd", c.R_LAYOUT: "slurm", c.R_DIRS: ["/etc/slurm/prolog.d"],
                                    c.R_TIMEOUT_S: 0, c.R_JOB: job, c.R_WARNINGS: []})
        for k in range(scripts):
            path = f"/etc/slurm/prolog.d/{k:02d}-check"
            j.append(c.K_SCRIPT_STARTED, {c.R_INDEX: k, c.R_PATH: path, c.R_SHA256: "0" * 64, c.R_SIZE: 10,
                                          c.R_MODE: 0o100755, c.R_UID: 0, c.R_MTIME: 1})
            j.append(c.K_SCRIPT_ENDED, {c.R_INDEX: k, c.R_PATH: path, c.R_EXIT: 0, c.R_SIGNAL: None,
                                        c.R_TIMED_OUT: False, c.R_REFUSED: None, c.R_DURATION_NS: 1000,
                                        c.R_OUTPUT: None, c.R_OUTPUT_TRUNCATED: False})
        j.append(c.K_HOOK_ENDED, {c.R_STATUS: 0, c.R_N_SCRIPTS: scripts, c.R_FAILED_INDEX: None,
                                  c.R_DURATION_NS: 5000, c.R_WARNINGS: []})
        j.close()


def journal_files(journal: Path) -> list[str]:
    return sorted(p for p in os.listdir(journal) if p.endswith(c.JOURNAL_SUFFIX) and not p.startswith("."))


async def _stream_messages(url, stream=c.STREAM_NAME, subject_prefix=None):
    import nats
    from nats.js.errors import NotFoundError

    nc = await nats.connect(url, max_reconnect_attempts=1, connect_timeout=2)
    try:
        js = nc.jetstream(timeout=5)
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            return []
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                m = await js.get_msg(stream, seq)
            except NotFoundError:
                continue
            if subject_prefix and not m.subject.startswith(subject_prefix):
                continue
            out.append(m)
        return out
    finally:
        await nc.close()


def stream_messages(url, subject_prefix="hookscope.spans."):
    """Every message stored in the HOOKSCOPE stream (subject, headers, data)."""
    return asyncio.run(_stream_messages(url, subject_prefix=subject_prefix))


def spans_of(msgs):
    """[(span, resource_attrs)] of every span in the messages."""
    from emitter import otlp

    out = []
    for m in msgs:
        req = otlp.decode_trace(m.data)
        for rs in req.resource_spans:
            res = otlp.attributes_dict(rs.resource.attributes)
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    out.append((sp, res))
    return out

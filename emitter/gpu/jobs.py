"""Which job holds which GPU: learnt from the prolog/epilog journal records.

The runner records ``SLURM_JOB_GPUS`` / ``CUDA_VISIBLE_DEVICES`` /
``ROCR_VISIBLE_DEVICES`` in every ``hook_started``.  A node prolog claims the
listed GPU indices for its job; the job's node epilog releases them.  Pure
bookkeeping plus the optional dcgm-exporter HPC job-mapping directory
(``--hpc-job-mapping-dir``: one file per GPU index holding the job IDs).
"""

from __future__ import annotations

import os

from emitter import contract as c

PROLOGS = ("prolog_slurmd",)
EPILOGS = ("epilog_slurmd",)
# A job whose epilog the agent never sees (Epilog not wrapped by hookscope, a
# node rebooted mid-job) would hold its GPUs in the map for ever: a soak of
# prologs grew it by one job per hook.  Slurm hands an unshared GPU to one job
# at a time, and even gres/shard sharing rarely puts dozens of jobs on one
# GPU, so each GPU keeps its newest claims only.
MAX_JOBS_PER_GPU = 64


def parse_gpu_list(value) -> list[int]:
    """'0,1,4-5' -> [0, 1, 4, 5]; UUIDs, MIG names and junk are skipped."""
    out: list[int] = []
    for part in str(value or "").replace(" ", "").split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            a, b = int(lo), int(hi or lo)
            if 0 <= a <= b and b - a < 1024:
                out.extend(range(a, b + 1))
    return sorted(set(out))


def job_gpus(job: dict) -> list[int]:
    """GPU indices of a job's hook_started ``job`` dict, first list that parses."""
    for key in ("gpus", "cuda_visible_devices", "rocr_visible_devices"):
        idx = parse_gpu_list(job.get(key))
        if idx:
            return idx
    return []


class JobMap:
    """GPU index -> job IDs currently holding it (shared GPUs: several), oldest
    claim first, at most ``max_jobs`` per GPU."""

    def __init__(self, max_jobs: int = MAX_JOBS_PER_GPU):
        self.by_gpu: dict[int, dict[str, None]] = {}  # a dict as an insertion-ordered set
        self.max_jobs = max_jobs

    def load(self, data: dict) -> None:
        """From ``dump()``'s form (the agent's state file); bad entries are skipped."""
        self.by_gpu = {}
        for k, v in (data or {}).items():
            if isinstance(v, list) and v and str(k).isdigit():
                self.by_gpu[int(k)] = dict.fromkeys(str(j) for j in v[-self.max_jobs:])

    def dump(self) -> dict:
        return {str(k): list(v) for k, v in self.by_gpu.items()}

    def observe(self, started: dict | None) -> str | None:
        """Update from one hook_started record; returns 'claim'/'release'/None."""
        if not started:
            return None
        job = started.get(c.R_JOB) or {}
        job_id = job.get("job_id")
        ctx = started.get(c.R_CONTEXT)
        if not job_id:
            return None
        if ctx in PROLOGS:
            for i in job_gpus(job):
                jobs = self.by_gpu.setdefault(i, {})
                jobs.pop(str(job_id), None)
                jobs[str(job_id)] = None
                while len(jobs) > self.max_jobs:
                    del jobs[next(iter(jobs))]
            return "claim"
        if ctx in EPILOGS:
            for jobs in self.by_gpu.values():
                jobs.pop(str(job_id), None)
            self.by_gpu = {i: j for i, j in self.by_gpu.items() if j}
            return "release"
        return None

    def job_of(self, index: int) -> str | None:
        jobs = self.by_gpu.get(index)
        return ",".join(sorted(jobs)) if jobs else None

    def gpus_of(self, job_id) -> list[int]:
        return sorted(i for i, j in self.by_gpu.items() if str(job_id) in j)

    def write_dcgm_dir(self, directory: str, gpu_indices) -> None:
        """dcgm-exporter's HPC job mapping: file ``<dir>/<index>`` listing job IDs,
        one per line; empty when idle.  Each file replaced atomically."""
        os.makedirs(directory, exist_ok=True)
        for i in gpu_indices:
            jobs = sorted(self.by_gpu.get(i, ()))
            path = os.path.join(directory, str(i))
            body = "".join(f"{j}\n" for j in jobs)
            try:
                with open(path) as f:
                    if f.read() == body:
                        continue
            except OSError:
                pass
            tmp = os.path.join(directory, f".{i}.tmp")
            with open(tmp, "w") as f:
                f.write(body)
            os.replace(tmp, path)

"""Which job holds which GPU: learnt from the prolog/epilog journal records.

The runner records ``SLURM_JOB_GPUS`` / ``CUDA_VISIBLE_DEVICES`` /
``ROCR_VISIBLE_DEVICES`` in every ``hook_started``.  A node prolog claims the
listed GPUs for its job; the job's node epilog releases them.  In Prolog and
Epilog those lists hold GPU minor numbers (slurmd writes the trailing digits
of each gres.conf ``File=/dev/nvidiaN``), the index every backend reports;
from Slurm 25.11 ``CUDA_VISIBLE_DEVICES`` may hold UUIDs instead, which are
resolved through the UUIDs the backend samples (:meth:`JobMap.learn`).
Pure bookkeeping plus the optional dcgm-exporter HPC job-mapping directory
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


def _tokens(value) -> list[str]:
    return [p for p in str(value or "").replace(" ", "").split(",") if p]


def parse_gpu_list(value) -> list[int]:
    """'0,1,4-5' -> [0, 1, 4, 5]; UUIDs, MIG names and junk are skipped
    (:func:`gpu_uuids` returns the UUIDs)."""
    out: list[int] = []
    for part in _tokens(value):
        lo, _, hi = part.partition("-")
        if lo.isdigit() and (not hi or hi.isdigit()):
            a, b = int(lo), int(hi or lo)
            if 0 <= a <= b and b - a < 1024:
                out.extend(range(a, b + 1))
    return sorted(set(out))


def gpu_uuids(value) -> list[str]:
    """The UUID entries of a device list: ``GPU-<uuid>`` / ``MIG-<uuid>``
    (Slurm 25.11 may put these in CUDA_VISIBLE_DEVICES for Prolog/Epilog;
    CUDA also accepts a unique prefix of one)."""
    return [p for p in _tokens(value) if p[:4].upper() in ("GPU-", "MIG-")]


def resolve_uuid(token: str, uuid_index: dict) -> int | None:
    """The GPU index a UUID (or a unique prefix of one, as CUDA accepts)
    names; a MIG device's UUID resolves to its parent GPU.  None: unknown."""
    t = token.lower()
    if t in uuid_index:
        return uuid_index[t]
    hits = {i for u, i in uuid_index.items() if u.startswith(t)}
    return hits.pop() if len(hits) == 1 else None


def uuid_index_of(samples) -> dict:
    """{lowercased GPU or MIG UUID: GPU index} from GpuSamples."""
    out = {}
    for s in samples:
        for u in (s.uuid, *getattr(s, "mig_uuids", ())):
            if u:
                out[str(u).lower()] = s.index
    return out


def job_gpus(job: dict, uuid_index: dict | None = None) -> list[int]:
    """GPU indices of a job's hook_started ``job`` dict, from the first list
    that names any: indices as they are, UUIDs through ``uuid_index``."""
    for key in ("gpus", "cuda_visible_devices", "rocr_visible_devices"):
        idx = set(parse_gpu_list(job.get(key)))
        for u in gpu_uuids(job.get(key)):
            i = resolve_uuid(u, uuid_index or {})
            if i is not None:
                idx.add(i)
        if idx:
            return sorted(idx)
    return []


def job_gpu_names(job: dict) -> tuple[list[int], list[str]]:
    """(indices, UUIDs) of the first list in ``job`` that names any GPU."""
    for key in ("gpus", "cuda_visible_devices", "rocr_visible_devices"):
        idx, uu = parse_gpu_list(job.get(key)), gpu_uuids(job.get(key))
        if idx or uu:
            return idx, uu
    return [], []


class JobMap:
    """GPU index -> job IDs currently holding it (shared GPUs: several), oldest
    claim first, at most ``max_jobs`` per GPU.

    A claim by UUID (Slurm 25.11's CUDA_VISIBLE_DEVICES) is resolved through
    the UUIDs learnt from the GPU samples (:meth:`learn`); one that arrives
    before the first sample waits in ``by_uuid`` and moves to its index then.
    """

    def __init__(self, max_jobs: int = MAX_JOBS_PER_GPU):
        self.by_gpu: dict[int, dict[str, None]] = {}  # a dict as an insertion-ordered set
        self.by_uuid: dict[str, dict[str, None]] = {}  # unresolved UUID claims
        self.uuids: dict[str, int] = {}  # lowercased GPU/MIG UUID -> index
        self.max_jobs = max_jobs

    def load(self, data: dict) -> None:
        """From ``dump()``'s form (the agent's state file); bad entries are skipped."""
        self.by_gpu, self.by_uuid = {}, {}
        for k, v in (data or {}).items():
            if not (isinstance(v, list) and v):
                continue
            jobs = dict.fromkeys(str(j) for j in v[-self.max_jobs:])
            if str(k).isdigit():
                self.by_gpu[int(k)] = jobs
            elif gpu_uuids(k) == [k]:
                self.by_uuid[k] = jobs

    def dump(self) -> dict:
        return {**{str(k): list(v) for k, v in self.by_gpu.items()},
                **{k: list(v) for k, v in self.by_uuid.items()}}

    def _claim(self, jobs: dict, job_id: str) -> None:
        jobs.pop(job_id, None)
        jobs[job_id] = None
        while len(jobs) > self.max_jobs:
            del jobs[next(iter(jobs))]

    def learn(self, samples) -> bool:
        """Learn UUID -> index from GPU samples; True when a waiting UUID
        claim moved to its index (the dcgm directory is then out of date)."""
        self.uuids.update(uuid_index_of(samples))
        moved = False
        for token in list(self.by_uuid):
            i = resolve_uuid(token, self.uuids)
            if i is not None:
                for j in self.by_uuid.pop(token):
                    self._claim(self.by_gpu.setdefault(i, {}), j)
                moved = True
        return moved

    def indices(self, job: dict) -> list[int]:
        """GPU indices a hook_started ``job`` dict names, UUIDs resolved."""
        return job_gpus(job, self.uuids)

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
            idx, uuids = job_gpu_names(job)
            for u in uuids:
                i = resolve_uuid(u, self.uuids)
                if i is None:
                    self._claim(self.by_uuid.setdefault(u, {}), str(job_id))
                else:
                    idx.append(i)
            for i in sorted(set(idx)):
                self._claim(self.by_gpu.setdefault(i, {}), str(job_id))
            return "claim"
        if ctx in EPILOGS:
            for jobs in (*self.by_gpu.values(), *self.by_uuid.values()):
                jobs.pop(str(job_id), None)
            self.by_gpu = {i: j for i, j in self.by_gpu.items() if j}
            self.by_uuid = {u: j for u, j in self.by_uuid.items() if j}
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

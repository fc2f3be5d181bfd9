"""A cheap writer of the runner's journal files, for benchmarks that simulate
thousands of hook runs per second on one machine.

The runner's own writer (``emitter.journal.Journal``) costs about 0.3 ms per
hook on this machine: per-hook set-up (chain.head lock, lost counter, spool
check) and pure-Python canonical JSON, chosen to keep ``json`` out of the
hook's imports.  Real nodes pay that on their own CPUs; a soak that simulates
2,000 hook runs/s on 2 cores cannot.  ``SimNode`` keeps one node's chain in
memory and writes each hook file in one go, encoded with the C ``json``
encoder.  The bytes are the same as the runner's: ``canonical_json`` is the
contract's form, which tests/runner/test_journal.py proves the runner's
encoder matches; tests/bench/test_simjournal.py checks these files against
the journal's own reader, and bench_soak.py verifies every stored chain.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from emitter import contract as c
from emitter.journal import file_name

_dumps = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


class SimNode:
    """One simulated node's journal directory; the only writer of its chain."""

    def __init__(self, directory: str, node: str, cluster: str):
        self.dir = str(directory)
        self.node = node
        self.cluster = cluster
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.seq = 0
        self.prev = c.CHAIN_GENESIS
        self.chain = os.urandom(8).hex()
        self._head = os.open(os.path.join(self.dir, c.CHAIN_HEAD_FILE),
                             os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._pid = os.getpid()

    def _line(self, rec: dict) -> bytes:
        self.seq += 1
        rec[c.R_CHAIN] = self.chain
        rec[c.R_SEQ] = self.seq
        rec[c.R_PREV] = self.prev
        h = hashlib.sha256(_dumps(rec).encode("utf-8")).hexdigest()
        rec[c.R_HASH] = h
        self.prev = h
        return _dumps(rec).encode("utf-8") + b"\n"

    def hook(self, job_id: int, n_scripts: int = 2, fail_index: int | None = None,
             context: str = "prolog_slurmd") -> int:
        """Write one complete hook file (as ``sim_hook`` in bench_load.py); returns records written."""
        t0 = time.time_ns()
        hook_id = os.urandom(8).hex()
        hook_dir = "/etc/slurm/epilog.d" if context.startswith("epilog") else "/etc/slurm/prolog.d"
        base = {c.R_VERSION: c.SCHEMA_VERSION, c.R_NODE: self.node, c.R_CLUSTER: self.cluster,
                c.R_HOOK_ID: hook_id, c.R_PID: self._pid}
        job = {k: None for k in c.JOB_ENV}
        job.update(job_id=str(job_id), user="alice", uid="1000", partition="gpu", nodelist=self.node,
                   cluster=self.cluster, gpus="0,1,2,3,4,5,6,7")
        lines = [self._line(dict(base, **{c.R_KIND: c.K_HOOK_STARTED, c.R_TS: t0, c.R_CONTEXT: context,
                                          c.R_LAYOUT: "slurm", c.R_DIRS: [hook_dir],
                                          c.R_TIMEOUT_S: 0, c.R_JOB: job, c.R_WARNINGS: []}))]
        status, failed = 0, None
        ts = t0
        for i in range(n_scripts):
            path = f"{hook_dir}/{10 * (n_scripts - i):02d}-check.sh"
            lines.append(self._line(dict(base, **{
                c.R_KIND: c.K_SCRIPT_STARTED, c.R_TS: ts + 1000, c.R_INDEX: i, c.R_PATH: path,
                c.R_SHA256: "0" * 64, c.R_SIZE: 120, c.R_MODE: 0o100755, c.R_UID: 0, c.R_MTIME: t0})))
            rc = 1 if i == fail_index else 0
            ts += 2_000_000
            lines.append(self._line(dict(base, **{
                c.R_KIND: c.K_SCRIPT_ENDED, c.R_TS: ts, c.R_INDEX: i, c.R_PATH: path, c.R_EXIT: rc,
                c.R_SIGNAL: None, c.R_TIMED_OUT: False, c.R_REFUSED: None, c.R_DURATION_NS: 2_000_000,
                c.R_OUTPUT: "GPU 3 missing\n" if rc else None, c.R_OUTPUT_TRUNCATED: False})))
            if rc:
                status, failed = rc, i
                break
        lines.append(self._line(dict(base, **{
            c.R_KIND: c.K_HOOK_ENDED, c.R_TS: ts + 1000, c.R_STATUS: status, c.R_N_SCRIPTS: n_scripts,
            c.R_FAILED_INDEX: failed, c.R_DURATION_NS: ts + 1000 - t0, c.R_WARNINGS: []})))
        # Complete or absent: the agent never sees a half-written simulated file.
        tmp = os.path.join(self.dir, f".tmp-{hook_id}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"".join(lines))
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(self.dir, file_name(t0, hook_id)))
        os.pwrite(self._head, b"%d %s %s\n" % (self.seq, self.prev.encode(), self.chain.encode()), 0)
        return len(lines)

    def close(self) -> None:
        os.close(self._head)

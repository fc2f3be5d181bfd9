"""Realistic journal records (exactly per the journal spec, valid hash chains)
and the OTLP messages the agent makes of them (through ``emitter.otlp``).

Used by the collector tests and tests/bench/bench_collector.py.
"""

from __future__ import annotations

import os
import time

from emitter import contract as C
from emitter import otlp


class Node:
    """One node's journal writer: node-wide seq and prev/hash chain."""

    def __init__(self, node="node001", cluster="gpu1"):
        self.node = node
        self.cluster = cluster
        self.seq = 0
        self.prev = C.CHAIN_GENESIS
        self.chain = os.urandom(8).hex()

    def new_chain(self):
        """The journal is re-created (spool wiped, chain.head lost): a new
        chain id, seq 1 again from the genesis hash."""
        self.seq = 0
        self.prev = C.CHAIN_GENESIS
        self.chain = os.urandom(8).hex()

    def record(self, kind, hook, ts, **fields):
        self.seq += 1
        rec = {C.R_VERSION: C.SCHEMA_VERSION, C.R_KIND: kind, C.R_CHAIN: self.chain, C.R_SEQ: self.seq,
               C.R_PREV: self.prev,
               C.R_TS: ts, C.R_NODE: self.node, C.R_CLUSTER: self.cluster, C.R_HOOK_ID: hook,
               C.R_PID: 4242}
        rec.update(fields)
        rec[C.R_HASH] = C.record_hash(rec)
        self.prev = rec[C.R_HASH]
        return rec

    def hook(self, job_id="1001", context="prolog_slurmd", n_scripts=8, fail_index=None,
             ts=None, hook_id=None, killed_at=None, user="alice", output=None):
        """Records of one hook file.  ``killed_at``: the runner died while
        script ``killed_at`` ran (no script_ended, no hook_ended)."""
        hook_id = hook_id or os.urandom(8).hex()
        t = ts if ts is not None else time.time_ns() - 5 * 10**9
        job = {k: None for k in C.JOB_ENV}
        job.update(job_id=job_id, user=user, uid="1000", partition="batch", nodelist="node[001-004]",
                   cluster=self.cluster, account="research", job_name="train", restart_count="0",
                   gpus="0,1,2,3,4,5,6,7")
        recs = [self.record(C.K_HOOK_STARTED, hook_id, t, context=context, layout="slurm",
                            dirs=["/etc/slurm/prolog.d"], timeout_s=300, job=job, warnings=[])]
        status = 0
        failed = None
        for i in range(n_scripts):
            path = f"/etc/slurm/prolog.d/{i:02d}-check.sh"
            t += 1000
            recs.append(self.record(C.K_SCRIPT_STARTED, hook_id, t, index=i, path=path,
                                    sha256="ab" * 32, size=1234 + i, mode=0o100755, uid=0,
                                    mtime=1_700_000_000_000_000_000))
            if killed_at == i:
                return hook_id, recs
            t += 2_000_000
            code = 1 if fail_index == i else 0
            recs.append(self.record(C.K_SCRIPT_ENDED, hook_id, t, index=i, path=path, exit_code=code,
                                    signal=None, timed_out=False, refused=None, duration_ns=2_000_000,
                                    output=(output or "boom: gpu 3 fell off the bus") if code else None,
                                    output_truncated=False, exported=[], unset=[]))
            if code:
                status, failed = code, i
                break
        t += 1000
        recs.append(self.record(C.K_HOOK_ENDED, hook_id, t, status=status, n_scripts=n_scripts,
                                failed_index=failed, duration_ns=t - recs[0][C.R_TS], warnings=[]))
        return hook_id, recs

    def node_event(self, state="drain", reason="Prolog error", ts=None):
        return self.record(C.K_NODE_EVENT, None, ts or time.time_ns() - 10**9, state=state,
                           reason=reason, source="scontrol")


def hook_message(node: Node, **kw):
    """(subject, msg_id, payload bytes, records) for one hook file."""
    hook_id, recs = node.hook(**kw)
    abandoned = recs[-1][C.R_TS] + 10**9 if recs[-1][C.R_KIND] != C.K_HOOK_ENDED else None
    req = otlp.fitted_trace(recs, abandoned_ts=abandoned)
    # the agent's content-keyed Msg-Id, which the collector recomputes
    return (C.subject(C.SIGNAL_SPANS, node.cluster, node.node),
            C.message_id(node.cluster, node.node, C.SIGNAL_SPANS, otlp.records_key(req)),
            req.SerializeToString(), recs)


def gpu_message(node: Node, ts=None, n_gpus=8, job_id="1001"):
    ts = ts or time.time_ns() - 10**9
    samples = [{"index": g, "uuid": f"GPU-{g:08d}", "model": "H100", "vendor": "nvidia",
                "source": "replay", "job_id": job_id,
                "metrics": {C.M_GPU_UTILIZATION: 0.5, C.M_GPU_MEMORY_USAGE: 10 * 2**30,
                            C.M_GPU_MEMORY_LIMIT: 80 * 2**30, C.M_GPU_POWER: 350.5,
                            C.M_GPU_TEMPERATURE: 61.0, C.M_GPU_XID: 79 if g == 3 else 0,
                            C.M_GPU_ECC_DBE: 0}} for g in range(n_gpus)]
    payload = otlp.encode_metrics(samples, node=node.node, cluster=node.cluster, ts=ts)
    import hashlib
    return (C.subject(C.SIGNAL_METRICS, node.cluster, node.node),
            C.message_id(node.cluster, node.node, C.SIGNAL_METRICS, hashlib.sha256(payload).hexdigest()),
            payload, samples)

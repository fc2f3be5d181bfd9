"""Realistic store contents for the queries tests.

The builder writes what the runner would: journal records exactly per the
journal spec (``seq``/``prev``/``hash`` chained per node with
``contract.record_hash``), and derives the store rows from them the way the
collector does (``collector/decode.py``): hook_runs, script_runs, node_events
(``event_id`` = the record's hash), plus gpu_samples.  It then writes them
either into a real DuckDB file made with ``collector.schema.create_all``
(Arrow batches, ``INSERT ... BY NAME``) or as a Parquet archive in the
``schema.py`` layout, so one abstract test class runs against both sources.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from collector import schema
from collector.columns import partition_value
from emitter import contract as C
from queries.source import table_columns

UTC = timezone.utc
T0 = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)

_ARROW = {
    "VARCHAR": pa.string(), "JSON": pa.string(), "INTEGER": pa.int32(), "BIGINT": pa.int64(),
    "UBIGINT": pa.uint64(), "DOUBLE": pa.float64(), "BOOLEAN": pa.bool_(),
    "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"), "VARCHAR[]": pa.list_(pa.string()),
    "BLOB": pa.binary(),
}


def arrow_schema(table: str) -> pa.Schema:
    return pa.schema([(n, _ARROW[t]) for n, t in table_columns(table)])


def ns(dt: datetime) -> int:
    """Integer ns of an aware datetime, whole microseconds (TIMESTAMPTZ precision)."""
    return ((dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)) * 1000


def from_ns(v: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=v // 1000)


def sha_of(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def script(path, version="v1", exit_code=0, signal=None, timed_out=False, refused=None,
           duration_ms=20.0, output=None):
    """One script of a hook: ``version`` is the script's content (hashed to its sha256)."""
    return {"path": path, "sha256": sha_of(f"{path}:{version}"), "exit_code": exit_code,
            "signal": signal, "timed_out": timed_out, "refused": refused,
            "duration_ms": duration_ms, "output": output}


class StoreBuilder:
    def __init__(self, cluster: str = "c1"):
        self.cluster = cluster
        self.rows: dict[str, list[dict]] = defaultdict(list)
        self._chain: dict[tuple, tuple[int, str]] = {}
        self._chain_id: dict[tuple, str] = {}  # (cluster, node) -> current chain id
        self._n = 0
        self.stream_seq = 0

    # ------------------------------------------------------------ journal
    def _record(self, node, kind, ts_ns, hook_id=None, **fields):
        key = (self.cluster, node)
        seq, prev = self._chain.get(key, (0, C.CHAIN_GENESIS))
        chain = self._chain_id.setdefault(key, hashlib.sha256(f"{self.cluster}:{node}".encode()).hexdigest()[:16])
        rec = {C.R_VERSION: C.SCHEMA_VERSION, C.R_KIND: kind, C.R_CHAIN: chain, C.R_SEQ: seq + 1, C.R_PREV: prev,
               C.R_TS: ts_ns, C.R_NODE: node, C.R_CLUSTER: self.cluster, C.R_HOOK_ID: hook_id,
               C.R_PID: 4242, **fields}
        rec[C.R_HASH] = C.record_hash(rec)
        self._chain[key] = (seq + 1, rec[C.R_HASH])
        self.rows["journal"].append({
            "cluster": self.cluster, "node": node, "chain": chain, "seq": seq + 1, "kind": kind,
            "hook_id": hook_id,
            "hash": rec[C.R_HASH], "prev": prev, "record": C.canonical_json(rec)})
        return rec

    def _next_id(self):
        self._n += 1
        return hashlib.sha256(f"{self.cluster}:{self._n}".encode()).hexdigest()[:16]

    def hook(self, node, at: datetime, context="prolog_slurmd", job_id=None, user=None,
             scripts=(), runner_killed=False, timeout_s=300, warnings=(), restart_count=None) -> str:
        """Record one hook run; its status is the first failing script's exit
        status (as the runner returns it to Slurm).  ``runner_killed``: the
        runner died during the last script (no script_ended, no hook_ended)."""
        self.stream_seq += 1
        hid = self._next_id()
        job = {k: None for k in C.JOB_ENV}
        job.update(job_id=None if job_id is None else str(job_id), user=user,
                   uid=None if user is None else "1000", partition="gpu", nodelist=node,
                   restart_count=None if restart_count is None else str(restart_count))
        t = ns(at)
        start_rec = self._record(node, C.K_HOOK_STARTED, t, hid, context=context, layout="dir",
                                 dirs=[f"/etc/slurm/{context}.d"], timeout_s=timeout_s, job=job,
                                 warnings=list(warnings))
        cursor = t + 1000
        status, failed_index = 0, None
        script_rows = []
        killed_any = False
        for i, sc in enumerate(scripts):
            sid = C.script_span_id(hid, i)
            started = self._record(node, C.K_SCRIPT_STARTED, cursor, hid, index=i, path=sc["path"],
                                   sha256=sc["sha256"], size=120, mode=0o100755, uid=0,
                                   mtime=ns(T0) - 10**12)
            dur = int(sc["duration_ms"] * 1000) * 1000
            killed = runner_killed and i == len(scripts) - 1
            if killed:
                ended = None
                killed_any = True
            else:
                ended = self._record(node, C.K_SCRIPT_ENDED, cursor + dur, hid, index=i, path=sc["path"],
                                     exit_code=sc["exit_code"], signal=sc["signal"],
                                     timed_out=sc["timed_out"], refused=sc["refused"], duration_ns=dur,
                                     output=sc["output"], output_truncated=False)
            failed = ended is None or ended[C.R_EXIT] != 0 or ended[C.R_TIMED_OUT] or ended[C.R_REFUSED]
            if failed and failed_index is None:
                failed_index = i
                status = 1 if ended is None else (ended[C.R_EXIT] or 1)
            script_rows.append({
                "span_id": sid, "hook_id": hid, "trace_id": C.trace_id(self.cluster, job_id),
                "cluster": self.cluster, "node": node, "context": context,
                "job_id": job["job_id"], "user_name": user, "idx": i, "path": sc["path"],
                "sha256": sc["sha256"], "size": 120, "mode": 0o100755, "owner_uid": 0,
                "mtime": from_ns(started[C.R_MTIME]), "start_ts": from_ns(cursor),
                "end_ts": None if killed else from_ns(cursor + dur),
                "duration_ms": None if killed else dur / 1e6,
                "exit_code": None if killed else sc["exit_code"],
                "signal": None if killed else sc["signal"],
                "timed_out": None if killed else sc["timed_out"],
                "refused": None if killed else sc["refused"], "runner_killed": killed,
                "output": None if killed else sc["output"],
                "output_truncated": None if killed else False, "exported": None,
                "stream_seq": self.stream_seq})
            cursor += dur + 1000
            if killed or failed:
                break  # the runner stops at the first failure (Slurm's own rule)
        end_rec = None
        if not killed_any:
            end_rec = self._record(node, C.K_HOOK_ENDED, cursor, hid, status=status,
                                   n_scripts=len(script_rows), failed_index=failed_index,
                                   duration_ns=cursor - t, warnings=[])
        self.rows["script_runs"].extend(script_rows)
        self.rows["hook_runs"].append({
            "hook_id": hid, "trace_id": C.trace_id(self.cluster, job_id), "cluster": self.cluster,
            "node": node, "context": context, "layout": "dir", "job_id": job["job_id"],
            "restart_count": restart_count, "user_name": user, "uid": None if user is None else 1000,
            "partition": "gpu", "nodelist": node, "account": None, "job_name": None,
            "array_job_id": None, "array_task_id": None, "gpus": None,
            "start_ts": from_ns(t), "end_ts": from_ns(cursor) if end_rec else None,
            "duration_ms": (cursor - t) / 1e6 if end_rec else None,
            "status": status if end_rec else None, "n_scripts": len(script_rows) if end_rec else None,
            "failed_index": failed_index if end_rec else None, "runner_killed": killed_any,
            "warnings": list(start_rec[C.R_WARNINGS]), "schema_version": C.SCHEMA_VERSION,
            "received_ts": from_ns(cursor + 10**9), "skew_ms": 0.0, "stream_seq": self.stream_seq})
        return hid

    def new_chain(self, node) -> str:
        """The node's journal is re-created (spool wiped, chain.head lost): the
        runner starts a new chain, seq 1 from the genesis hash."""
        key = (self.cluster, node)
        old = self._chain_id.get(key, "")
        self._chain_id[key] = hashlib.sha256(f"{self.cluster}:{node}:{old}".encode()).hexdigest()[:16]
        self._chain[key] = (0, C.CHAIN_GENESIS)
        return self._chain_id[key]

    def node_event(self, node, at: datetime, state, reason, source="slurmctld_epilog"):
        rec = self._record(node, C.K_NODE_EVENT, ns(at), None, state=state, reason=reason, source=source)
        self.rows["node_events"].append({
            "event_id": rec[C.R_HASH], "cluster": self.cluster, "node": node, "ts": from_ns(ns(at)),
            "state": state, "reason": reason, "source": source})

    def evict(self, node, n_records, at: datetime):
        """The spool dropped ``n_records`` (never shipped): skip their seqs and
        record a spool_evicted, as the runner does before its next hook."""
        key = (self.cluster, node)
        seq, prev = self._chain.get(key, (0, C.CHAIN_GENESIS))
        first, last = seq + 1, seq + n_records
        # The dropped records were chained; the next record links to the last.
        self._chain[key] = (last, sha_of(f"evicted:{node}:{last}"))
        self._record(node, C.K_SPOOL_EVICTED, ns(at), None, files=1, bytes=4096, seqs=[first, last])

    def gpu(self, node, at: datetime, gpu_index=0, xid=0, ecc_sbe=0, ecc_dbe=0, temperature_c=60.0,
            throttle_reasons=0, retired_pages=0, job_id=None):
        self.rows["gpu_samples"].append({
            "cluster": self.cluster, "node": node, "ts": at, "gpu_index": gpu_index,
            "uuid": f"GPU-{node}-{gpu_index}", "model": "NVIDIA H100 80GB HBM3", "job_id": job_id,
            "utilization": 0.5, "memory_used": 10 * 2**30, "memory_total": 80 * 2**30, "power_w": 300.0,
            "temperature_c": temperature_c, "sm_clock_mhz": 1980.0, "ecc_sbe": ecc_sbe, "ecc_dbe": ecc_dbe,
            "xid": xid, "retired_pages": retired_pages, "throttle_reasons": throttle_reasons,
            "source": "replay"})

    # ------------------------------------------------------------ output
    def arrow(self, table: str) -> pa.Table:
        return pa.Table.from_pylist(self.rows.get(table, []), schema=arrow_schema(table))

    def write_db(self, path) -> str:
        path = os.fspath(path)
        con = duckdb.connect(path)
        try:
            schema.create_all(con)
            for table in self.rows:
                con.register("batch", self.arrow(table))
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM batch")
                con.unregister("batch")
        finally:
            con.close()
        return path

    def write_archive(self, root, duplicate: bool = False, layout_names: bool = True) -> str:
        """The archive layout of schema.py.  ``duplicate`` writes every file
        again as a redelivery after a crash would (same rows, an overlapping
        stream-sequence range in the name), to prove readers dedupe;
        ``layout_names=False`` names files without sequence ranges (as a
        foreign tool might), which readers must dedupe by key instead."""
        root = os.fspath(root)
        for table, rows in self.rows.items():
            groups = defaultdict(list)
            for r in rows:
                groups[(r["cluster"], _day(table, r))].append(r)
            for n, ((cluster, day), grp) in enumerate(sorted(groups.items())):
                # As collector/archive.py does: the cluster lives in the
                # %-escaped partition directory only, not in the files.
                d = os.path.join(root, table, f"cluster={partition_value(cluster)}", f"date={day}")
                os.makedirs(d, exist_ok=True)
                tbl = pa.Table.from_pylist(grp, schema=arrow_schema(table))
                if "cluster" in tbl.schema.names:
                    tbl = tbl.drop_columns(["cluster"])
                first, last = 1 + 10_000 * n, 10_000 * (n + 1)
                names = [f"hookscope-collector-{first:012d}-{last:012d}.parquet"]
                if duplicate:
                    names.append(f"hookscope-collector-{first + 3:012d}-{last + 50:012d}.parquet")
                if not layout_names:
                    names = [f"part-{k}.parquet" for k in range(len(names))]
                for name in names:
                    pq.write_table(tbl, os.path.join(d, name))
        return root


def _day(table, r):
    """The partition date: the day the stream received the rows (a second
    after the record was written, in this builder)."""
    if table == "journal":
        ts = from_ns(json.loads(r["record"])[C.R_TS])
    else:
        ts = r.get("received_ts") or r.get("start_ts") or r.get("ts")
    return (ts + timedelta(seconds=1)).date().isoformat()

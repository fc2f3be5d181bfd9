"""``audit verify``, second step: the derived rows against their records.

The collector derives hook_runs, script_runs and node_events from the journal
records (``collector/decode.py``); the queries (``why``, ``drains``,
``audit``) read only the derived rows.  Every column that is a function of
hashed record fields is recomputed here from the records and compared:
times, job and user, environment metadata (the job's SLURM_* values), the
script's identity (path, sha256, size, mode, owner, mtime), its result and
and its output.  Not compared: the columns the collector adds on receipt
(``received_ts``, ``skew_ms``, ``stream_seq``, ``schema_version``), which no
hash covers, and ``trace_id`` (the span's, a function of cluster, job and
restart count that no query or page reads).

A row whose record is gone is a ``gap`` (the chain walk may already have
reported it); records whose row is gone are a ``deleted_row``.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

from collector.decode import _int_or_none
from emitter import contract as C

MAX_PROBLEMS = 10_000
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: TIMESTAMPTZ columns: the record holds integer ns, the store microseconds.
_TIME_COLS = frozenset(("start_ts", "end_ts", "mtime", "ts"))
#: The collector's stand-in when a script's hook_started was in another message.
_NO_CTX = {"context": "unknown", "job_id": None, "user_name": None}


def problem(out, cluster, node, seq, kind, detail, chain=None):
    if len(out) < MAX_PROBLEMS:
        out.append({"cluster": cluster, "node": node, "chain": chain, "seq": seq, "kind": kind,
                    "detail": detail})


def groups(cur, n=10_000):
    """(key, rows) per run of equal first column of an ordered cursor, fetched in chunks."""
    key, rows = None, []
    while True:
        chunk = cur.fetchmany(n)
        if not chunk:
            break
        for row in chunk:
            if rows and row[0] != key:
                yield key, rows
                rows = []
            key = row[0]
            rows.append(row)
    if rows:
        yield key, rows


def load(text):
    """A journal line as a dict, or None when it is not a JSON object (reported by the walk)."""
    try:
        rec = json.loads(text)
    except (TypeError, ValueError):
        return None
    return rec if type(rec) is dict else None


# ---------------------------------------------------------------- expectations
# What the collector stored for an integer field: the same rule, not a copy.
_int = _int_or_none


def _ms(dur):
    return dur / 1e6 if type(dur) is int else None


def _job(started) -> dict:
    job = started.get(C.R_JOB) if started else None
    return job if type(job) is dict else {}


def hook_expect(started, ended) -> list[tuple[int, dict]]:
    """[(seq, {column: value})] a hook_runs row must hold, per source record."""
    (s_seq, s), out = started, []
    job = _job(s)
    out.append((s_seq, {
        "cluster": s.get(C.R_CLUSTER), "node": s.get(C.R_NODE), "context": s.get(C.R_CONTEXT),
        "layout": s.get(C.R_LAYOUT), "job_id": job.get("job_id"),
        "restart_count": _int(job.get("restart_count")), "user_name": job.get("user"),
        "uid": _int(job.get("uid")), "partition": job.get("partition"), "nodelist": job.get("nodelist"),
        "account": job.get("account"), "job_name": job.get("job_name"),
        "array_job_id": job.get("array_job_id"), "array_task_id": job.get("array_task_id"),
        "gpus": job.get("gpus") or job.get("cuda_visible_devices") or job.get("rocr_visible_devices"),
        "start_ts": s.get(C.R_TS)}))
    warnings = list(s.get(C.R_WARNINGS) or [])
    if ended is None:
        # The runner died: the collector leaves the end empty and marks the run.
        out.append((s_seq, {"end_ts": None, "duration_ms": None, "status": None, "n_scripts": None,
                            "failed_index": None, "runner_killed": True, "warnings": warnings}))
    else:
        e_seq, e = ended
        out.append((e_seq, {"end_ts": e.get(C.R_TS), "duration_ms": _ms(e.get(C.R_DURATION_NS)),
                            "status": e.get(C.R_STATUS), "n_scripts": e.get(C.R_N_SCRIPTS),
                            "failed_index": e.get(C.R_FAILED_INDEX),
                            "warnings": warnings + list(e.get(C.R_WARNINGS) or [])}))
    return out


def script_expect(hook_started, started, ended) -> list[tuple[int, dict]]:
    """[(seq, {column: value})] a script_runs row must hold, per source record."""
    out = []
    if hook_started is not None:
        h_seq, h = hook_started
        job = _job(h)
        out.append((h_seq, {"context": h.get(C.R_CONTEXT), "job_id": job.get("job_id"),
                            "user_name": job.get("user")}))
    if started is not None:
        s_seq, s = started
        out.append((s_seq, {"cluster": s.get(C.R_CLUSTER), "node": s.get(C.R_NODE), "idx": s.get(C.R_INDEX),
                            "path": s.get(C.R_PATH), "sha256": s.get(C.R_SHA256), "size": s.get(C.R_SIZE),
                            "mode": s.get(C.R_MODE), "owner_uid": s.get(C.R_UID),
                            "mtime": s.get(C.R_MTIME), "start_ts": s.get(C.R_TS)}))
    if ended is None:
        seq = started[0] if started else None
        out.append((seq, {"end_ts": None, "duration_ms": None, "exit_code": None, "signal": None,
                          "timed_out": None, "refused": None, "output": None, "output_truncated": None,
                          "runner_killed": True}))
        return out
    x_seq, x = ended
    dur = x.get(C.R_DURATION_NS)
    want = {"end_ts": x.get(C.R_TS), "duration_ms": _ms(dur), "exit_code": x.get(C.R_EXIT),
            "signal": x.get(C.R_SIGNAL), "timed_out": x.get(C.R_TIMED_OUT), "refused": x.get(C.R_REFUSED),
            "output": x.get(C.R_OUTPUT), "output_truncated": x.get(C.R_OUTPUT_TRUNCATED),
            "exported": x.get(C.R_EXPORTED) or None}
    if started is None:
        ts = x.get(C.R_TS)
        want.update(cluster=x.get(C.R_CLUSTER), node=x.get(C.R_NODE), idx=x.get(C.R_INDEX),
                    path=x.get(C.R_PATH),
                    start_ts=ts - dur if type(ts) is int and type(dur) is int else ts)
    out.append((x_seq, want))
    return out


# ---------------------------------------------------------------- comparison
def _us(v):
    if isinstance(v, datetime):
        return (v - _EPOCH) // _US
    return v // 1000 if type(v) is int else v


_US = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=timezone.utc) - _EPOCH


def same(col, want, got) -> bool:
    if col in _TIME_COLS:
        return _us(want) == _us(got)
    if isinstance(want, bool) or isinstance(got, bool):
        return bool(want) == bool(got)  # NULL and false both say "no"
    if isinstance(want, float) or isinstance(got, float):
        return want is not None and got is not None and math.isclose(want, got, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(got, (list, tuple)) or isinstance(want, (list, tuple)):
        return list(want or []) == list(got or [])
    return want == got


def show(col, v) -> str:
    if v is None:
        return "NULL"
    if col in _TIME_COLS:
        us = _us(v)
        if type(us) is int:
            return (_EPOCH + us * _US).isoformat().replace("+00:00", "Z")
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


def compare(problems, cluster, node, row, expect, what, chain=None):
    """One ``altered`` finding per column of ``row`` that its records contradict."""
    for seq, want in expect:
        for col, w in want.items():
            got = row.get(col)
            if got == w and col not in _TIME_COLS:
                continue  # the common case, without the type dispatch
            if not same(col, w, got):
                problem(problems, cluster, node, seq, "altered",
                        f"{what}: {col} is {show(col, got)} but the journal record at position {seq} "
                        f"says {show(col, w)}", chain)


# ---------------------------------------------------------------- the walk over rows
_SCRIPT_COLS = ("cluster", "node", "context", "job_id", "user_name", "idx", "path", "sha256",
                "size", "mode", "owner_uid", "mtime", "start_ts", "end_ts", "duration_ms", "exit_code",
                "signal", "timed_out", "refused", "runner_killed", "output", "output_truncated", "exported")
_HOOK_COLS = ("cluster", "node", "context", "layout", "job_id", "restart_count", "user_name", "uid",
              "partition", "nodelist", "account", "job_name", "array_job_id", "array_task_id", "gpus",
              "start_ts", "end_ts", "duration_ms", "status", "n_scripts", "failed_index",
              "runner_killed", "warnings")


def check_rows(con, node, problems, gaps):
    """Every hook_runs / script_runs / node_events row must say what its
    journal records say, and every record must still have its row.

    One query interleaves, ordered by hook_id, each hook's journal records
    (src 0), its script_runs rows (1) and its hook_runs row (2); Python holds
    one hook at a time, so tens of millions of records verify in flat memory
    (the soak's 20 M records needed 23 GB when they were all kept)."""
    nf, params = (" AND node = ?", [str(node)] * 3) if node else ("", [])
    cur = con.execute(f"""
        SELECT hook_id, 0 AS src, cluster, node, seq AS pos, chain AS jchain, record
          FROM journal WHERE hook_id IS NOT NULL{nf}
        UNION ALL BY NAME
        SELECT hook_id, 1 AS src, idx AS pos, {', '.join(_SCRIPT_COLS)} FROM script_runs WHERE true{nf}
        UNION ALL BY NAME
        SELECT hook_id, 2 AS src, {', '.join(_HOOK_COLS)} FROM hook_runs WHERE true{nf}
        ORDER BY hook_id, src, pos""", params)
    names = [d[0] for d in cur.description]
    for hid, raw in groups(cur):
        rows = [dict(zip(names, r)) for r in raw]
        recs = _hook_records(r for r in rows if r["src"] == 0)
        ctx = _Hook(problems, gaps, hid, recs)
        seen = set()
        for r in rows:
            if r["src"] == 1:
                seen.add(r["idx"])
                ctx.script_row(r)
            elif r["src"] == 2:
                seen.add("hook")
                ctx.hook_row(r)
        ctx.rows_gone(seen)
    _check_node_events(con, node, problems)


def _hook_records(rows) -> dict:
    """{(kind, index): (seq, record)} of one hook's journal rows (unparseable ones were reported)."""
    out = {}
    for row in rows:
        rec = load(row["record"])
        if rec is not None:
            out[(rec.get(C.R_KIND), rec.get(C.R_INDEX))] = (row["pos"], rec)
    return out


class _Hook:
    """The rows of one hook against its records ``recs`` (empty: none left)."""

    def __init__(self, problems, gaps, hid, recs):
        self.problems, self.gaps, self.hid, self.recs = problems, gaps, hid, recs

    def hook_row(self, row):
        hid, recs = self.hid, self.recs
        what = f"hook_runs row {hid}"
        if not recs:
            return self._orphan(row, what)
        started, ended = recs.get((C.K_HOOK_STARTED, None)), recs.get((C.K_HOOK_ENDED, None))
        if started is None:
            return self._missing(row, f"the hook_started record of hook {hid} (its hook_runs row is stored)")
        expect = hook_expect(started, ended)
        if ended is None and any(row.get(c) is not None for c in ("status", "end_ts", "n_scripts")):
            self._missing(row, f"the hook_ended record of hook {hid} (its hook_runs row is stored)")
            expect = expect[:1]
        compare(self.problems, row["cluster"], row["node"], row, expect, what, self._chain())

    def script_row(self, row):
        hid, recs, idx = self.hid, self.recs, row["idx"]
        what = f"script_runs row of hook {hid} script {idx}"
        if not recs:
            return self._orphan(row, what)
        hs = recs.get((C.K_HOOK_STARTED, None))
        s, x = recs.get((C.K_SCRIPT_STARTED, idx)), recs.get((C.K_SCRIPT_ENDED, idx))
        name = f"hook {hid} script {idx}"
        claims_end = any(row.get(c) is not None for c in ("exit_code", "refused", "end_ts"))
        if x is None and claims_end:
            self._missing(row, f"the {C.K_SCRIPT_ENDED} record of {name} (its script_runs row is stored)")
        if s is None and row.get("sha256") is not None:
            self._missing(row, f"the {C.K_SCRIPT_STARTED} record of {name} (its script_runs row is stored)")
        if s is None and x is None:
            return
        expect = script_expect(hs, s, x)
        if x is None and claims_end:
            expect = expect[:-1]
        if hs is not None and all(row.get(k) == v for k, v in _NO_CTX.items()):
            # Its hook_started came in another message: the collector could
            # not copy the job (decode's stand-in); the hook_runs row has it.
            expect = expect[1:]
        compare(self.problems, row["cluster"], row["node"], row, expect, what, self._chain())

    def rows_gone(self, seen):
        """Records whose derived row is gone: the hook vanished from the
        queries while the journal still holds it."""
        if not self.recs:
            return
        for (kind, idx), (seq, rec) in sorted(self.recs.items(), key=lambda kv: kv[1][0]):
            if kind == C.K_HOOK_STARTED and "hook" not in seen:
                table = "hook_runs row"
            elif kind in (C.K_SCRIPT_STARTED, C.K_SCRIPT_ENDED) and idx not in seen:
                seen.add(idx)  # one finding per script
                table = f"script_runs row of script {idx}"
            else:
                continue
            problem(self.problems, rec.get(C.R_CLUSTER), rec.get(C.R_NODE), seq, "deleted_row",
                    f"the {table} of hook {self.hid} is missing: its {kind} record at position {seq} "
                    f"is in the journal (the queries no longer see this run)", rec.get(C.R_CHAIN, ""))

    def _chain(self):
        return next(iter(self.recs.values()))[1].get(C.R_CHAIN, "") if self.recs else None

    def _orphan(self, row, what):
        problem(self.problems, row["cluster"], row["node"], None, "altered",
                f"{what} has no journal record behind it")

    def _missing(self, row, what):
        """A record the derived rows prove was written is not in the journal:
        a deletion the chain cannot show (the end of a chain has no successor)."""
        recs = self.recs
        first = min(seq for seq, _ in recs.values())
        after, last = max(recs.values(), key=lambda hit: hit[0])
        chain = last.get(C.R_CHAIN, "")  # a hook's records are in one chain
        cluster, node = row["cluster"], row["node"]
        if any(a <= after + 1 and b >= first - 1 for a, b in self.gaps.get((cluster, node, chain), ())):
            return  # inside a gap the chain walk already reported
        problem(self.problems, cluster, node, after + 1, "gap", f"{what} is missing from the journal "
                f"(expected after position {after})", chain)


_EVENT_COLS = {"cluster": C.R_CLUSTER, "node": C.R_NODE, "ts": C.R_TS, "state": C.R_STATE,
               "reason": C.R_REASON, "source": C.R_SOURCE}


def _check_node_events(con, node, problems):
    """node_events rows are keyed by their record's hash: each must match its
    record, and each node_event record must still have its row."""
    nf, params = (" AND n.node = ?", [str(node)]) if node else ("", [])
    cur = con.execute(
        f"SELECT n.event_id, n.cluster, n.node, n.ts, n.state, n.reason, n.source, j.seq, j.chain, j.record "
        f"FROM node_events n LEFT JOIN journal j ON j.cluster = n.cluster AND j.node = n.node "
        f"AND j.kind = '{C.K_NODE_EVENT}' AND j.hash = n.event_id WHERE true{nf} ORDER BY n.node, n.ts", params)
    for _, rows in groups(cur):
        for event_id, cluster, nd, ts, state, reason, source, seq, chain, text in rows:
            rec = load(text) if text is not None else None
            if text is None:
                problem(problems, cluster, nd, None, "gap",
                        f"node_events row {event_id[:12]} ({show('ts', ts)}) has no node_event record "
                        f"in the journal")
                continue
            if rec is None:
                continue  # reported by the walk
            row = {"cluster": cluster, "node": nd, "ts": ts, "state": state, "reason": reason, "source": source}
            compare(problems, cluster, nd, row, [(seq, {c: rec.get(f) for c, f in _EVENT_COLS.items()})],
                    f"node_events row {event_id[:12]}", chain)
    nf = nf.replace("n.node", "j.node")
    for cluster, nd, chain, seq in con.execute(
            f"SELECT j.cluster, j.node, j.chain, j.seq FROM journal j WHERE j.kind = '{C.K_NODE_EVENT}'{nf} "
            f"AND NOT EXISTS (SELECT 1 FROM node_events n WHERE n.event_id = j.hash AND n.cluster = j.cluster "
            f"AND n.node = j.node) ORDER BY j.cluster, j.node, j.chain, j.seq LIMIT {MAX_PROBLEMS}",
            params).fetchall():
        problem(problems, cluster, nd, seq, "deleted_row",
                f"the node_events row of the node_event record at position {seq} is missing "
                f"(the queries no longer see this event)", chain)

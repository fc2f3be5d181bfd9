"""PURE decoding: one JetStream message (OTLP protobuf bytes) -> store rows.

No I/O here.  ``decode_message`` returns either a :class:`Decoded` (row tuples
per store table, in ``schema.TABLES`` column order) or a :class:`DeadLetter`
(reason + detail).  It never raises on bad input: anything unexpected in a
payload becomes a dead letter, so one bad message can never block the stream.

Speed matters (the collector's budget is a few microseconds per span): the
store tables are loaded from the raw journal lines every span carries in
``contract.A_RECORDS`` (``json.loads`` is C-fast), rows are plain tuples that
the batch turns into Arrow columns once (``columns.to_arrow``), and span
attributes are not walked one by one unless the records attribute is not
where the agent puts it.
"""

from __future__ import annotations

import json
from operator import itemgetter

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.decoded import (  # noqa: F401  (re-exported: callers import them from here)
    DL_BAD_IDS, DL_BAD_RECORD, DL_BAD_SUBJECT, DL_BAD_TIMESTAMP, DL_IDENTITY, DL_MALFORMED, DL_MISSING,
    DL_NOT_OURS, DL_OVERSIZED, DL_REASONS, DL_STORE_REJECTED, DL_TOO_NEW, DeadLetter, Decoded)
from collector.identity import check_decoded as check_identity
from emitter import contract as C

try:  # 2-3x faster JSON parsing when available; the stdlib is the fallback
    import msgspec as _msgspec

    _loads = _msgspec.json.Decoder().decode
    _JSON_ERRORS = (ValueError, _msgspec.DecodeError)
except ImportError:  # pragma: no cover - depends on the installation
    _loads = json.loads
    _JSON_ERRORS = (ValueError,)

#: Earliest believable node timestamp (2000-01-01T00:00:00Z).
MIN_TS_NS = 946_684_800 * 10**9
#: How far ahead of the stream's receive time a node clock may be.
MAX_FUTURE_NS = 86_400 * 10**9

_SPANS_PREFIX = f"{C.SUBJECT_PREFIX}.{C.SIGNAL_SPANS}."
_METRICS_PREFIX = f"{C.SUBJECT_PREFIX}.{C.SIGNAL_METRICS}."
_HEADS_PREFIX = f"{C.SUBJECT_PREFIX}.{C.SIGNAL_HEADS}."


class _Bad(Exception):
    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------- upgrades
def _upgrade_v0(rec: dict) -> dict:
    """v0 (pre-release) records spelled the hook ID ``hook_id`` and stored
    ``ts`` in microseconds as ``ts_us``.  Kept as the template for real upgrades."""
    rec = dict(rec)
    if "hook_id" in rec and C.R_HOOK_ID not in rec:
        rec[C.R_HOOK_ID] = rec.pop("hook_id")
    if "ts_us" in rec and C.R_TS not in rec:
        rec[C.R_TS] = rec.pop("ts_us") * 1000
    rec[C.R_VERSION] = 1
    return rec


#: from-version -> function returning the record at from-version + 1.
UPGRADES = {0: _upgrade_v0}

#: ``chain`` of a record written before chain ids existed (same schema
#: version: the field was added, nothing changed meaning); such records are
#: stored with this chain so they keep the (cluster, node, chain, seq) key.
NO_CHAIN = ""


def upgrade_record(rec: dict) -> dict:
    """Bring an older record up to ``contract.SCHEMA_VERSION`` (hash untouched:
    the store keeps the original line, which is what was hashed)."""
    v = rec.get(C.R_VERSION)
    while v != C.SCHEMA_VERSION:
        if type(v) is not int:
            raise _Bad(DL_BAD_RECORD, f"record schema version {v!r} is not an integer")
        if v > C.SCHEMA_VERSION:
            raise _Bad(DL_TOO_NEW, f"record schema version {v} > supported {C.SCHEMA_VERSION}; "
                       "upgrade the collector")
        fn = UPGRADES.get(v)
        if fn is None:
            raise _Bad(DL_BAD_RECORD, f"no upgrade from record schema version {v}")
        rec = fn(rec)
        v = rec.get(C.R_VERSION)
    return rec


# ---------------------------------------------------------------- helpers
def _int_or_none(x):
    if x is None or type(x) is int:
        return x
    if type(x) is str:
        try:
            return int(x)
        except ValueError:
            return None
    return None


def _any_value(v):
    """OTLP AnyValue -> plain Python (for span event attributes, rare)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def _find_attr(attrs, key):
    """The value of attribute ``key``: the agent puts the records last, so look
    there (and first) before walking the list."""
    n = len(attrs)
    if n:
        kv = attrs[n - 1]
        if kv.key == key:
            return kv.value
        kv = attrs[0]
        if kv.key == key:
            return kv.value
        for kv in attrs:
            if kv.key == key:
                return kv.value
    return None


def subject_parts(subject: str):
    """(signal, cluster_token, node_token) or None when it is not one of ours."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[0] != C.SUBJECT_PREFIX:
        return None
    return parts[1], parts[2], parts[3]


# ---------------------------------------------------------------- entry point
def decode_message(payload: bytes, subject: str, stream_seq: int, received_ns: int,
                   schema_header: str | None = None,
                   max_bytes: int = C.MAX_MESSAGE_BYTES) -> Decoded | DeadLetter:
    """Decode one message; ``received_ns`` is the stream's timestamp of it
    (deterministic across redeliveries, so replays give identical rows)."""
    try:
        if len(payload) > max_bytes:
            raise _Bad(DL_OVERSIZED, f"{len(payload)} bytes > limit {max_bytes}")
        if schema_header is not None:
            try:
                hv = int(schema_header)
            except ValueError:
                raise _Bad(DL_BAD_RECORD, f"header {C.HDR_SCHEMA}={schema_header!r} is not an integer")
            if hv > C.SCHEMA_VERSION:
                raise _Bad(DL_TOO_NEW, f"header {C.HDR_SCHEMA}={hv} > supported {C.SCHEMA_VERSION}; "
                           "upgrade the collector")
        if subject.startswith(_SPANS_PREFIX):
            return _own(_decode_traces(payload, stream_seq, received_ns), subject)
        if subject.startswith(_METRICS_PREFIX):
            return _own(_decode_metrics(payload, received_ns), subject)
        if subject.startswith(_HEADS_PREFIX):
            return _own(_decode_heads(payload, stream_seq, received_ns), subject)
        raise _Bad(DL_BAD_SUBJECT, f"subject {subject!r} is neither {_SPANS_PREFIX}* nor {_METRICS_PREFIX}*")
    except _Bad as exc:
        return DeadLetter(exc.reason, exc.detail)
    except Exception as exc:  # a decoder bug must not block the stream either
        return DeadLetter(DL_BAD_RECORD, f"{type(exc).__name__}: {exc}"[:500])


def _own(dec, subject):
    """Identity from credentials: every stored row must be the subject's node."""
    why = check_identity(subject, dec)
    if why is not None:
        raise _Bad(DL_IDENTITY, why)
    return dec


def _decode_heads(payload, stream_seq, received_ns):
    from collector.heads import HeadsError, decode
    try:
        return decode(payload, MIN_TS_NS, received_ns + MAX_FUTURE_NS, received_ns, stream_seq)
    except HeadsError as exc:
        raise _Bad(DL_BAD_RECORD, str(exc))


def _resource_attrs(resource, what):
    ra = {kv.key: kv.value for kv in resource.attributes}
    svc = ra.get(C.A_SERVICE_NAME)
    if svc is None or svc.string_value != C.SERVICE_NAME:
        raise _Bad(DL_NOT_OURS, f"{what}: resource {C.A_SERVICE_NAME} is not {C.SERVICE_NAME!r}")
    return ra


_JGET = itemgetter(C.R_CLUSTER, C.R_NODE, C.R_SEQ, C.R_KIND, C.R_HOOK_ID, C.R_HASH, C.R_PREV, C.R_TS)
_JGET_NOHOOK = itemgetter(C.R_CLUSTER, C.R_NODE, C.R_SEQ, C.R_KIND, C.R_HASH, C.R_PREV, C.R_TS)
_SGET = itemgetter(C.R_CLUSTER, C.R_NODE, C.R_INDEX, C.R_PATH, C.R_SHA256, C.R_SIZE, C.R_MODE, C.R_UID,
                   C.R_MTIME, C.R_TS)
_XGET = itemgetter(C.R_TS, C.R_DURATION_NS, C.R_EXIT, C.R_SIGNAL, C.R_TIMED_OUT, C.R_REFUSED, C.R_OUTPUT,
                   C.R_OUTPUT_TRUNCATED)
#: context of scripts whose hook_started is not in the same message
_NO_CTX = ("unknown", None, None)


_NOT_SET = object()


def _attested_uid(ra):
    """The uid the agent attests wrote a message's records (its spool's owner,
    docs/journal.md "Per-owner spools"); None when not marked (an older agent,
    direct mode): root's journal, as before per-owner spools existed."""
    v = ra.get(C.A_ATTESTED_UID)
    if v is None:
        return None
    if v.WhichOneof("value") != "int_value" or not 0 <= v.int_value < 2**32:
        raise _Bad(DL_BAD_RECORD, f"resource {C.A_ATTESTED_UID} is not a uid")
    return v.int_value


def _span_ctx(sp):
    """(context, job_id, user) a script span carries when it was split from its
    hook span (otlp.split_requests); _NO_CTX when it carries none."""
    v = _find_attr(sp.attributes, C.A_CONTEXT)
    if v is None or not v.string_value:
        return _NO_CTX
    job = _find_attr(sp.attributes, C.A_JOB_ID)
    user = _find_attr(sp.attributes, C.A_JOB_USER)
    return (v.string_value, _any_value(job) if job is not None else None,
            _any_value(user) if user is not None else None)


def _parse(cls, payload):
    req = cls()
    try:
        req.ParseFromString(payload)
    except DecodeError as exc:
        raise _Bad(DL_MALFORMED, f"not an OTLP {cls.__name__}: {exc}")
    return req


def _decode_traces(payload, stream_seq, received_ns):
    req = _parse(ExportTraceServiceRequest, payload)
    if not req.resource_spans:
        raise _Bad(DL_NOT_OURS, "OTLP request with no resource spans")
    lo, hi = MIN_TS_NS, received_ns + MAX_FUTURE_NS
    loads = _loads
    hooks = {}      # hook_id -> [started, ended, trace_id, killed]
    scripts = {}    # span_id -> [started, ended, trace_id, killed, hook_id]
    node_events = []
    journal = []
    events = []
    n_spans = 0
    version = None
    cluster = None
    texts = []
    span_ctx = {}   # hook_id -> context of scripts split from their hook span
    n_errors = 0    # journal_error records (damage, untrusted or stuck files on the node)
    attested = _NOT_SET  # the uid the node's agent attests wrote the records (one per message)
    for rs in req.resource_spans:
        ra = _resource_attrs(rs.resource, "spans")
        uid = _attested_uid(ra)
        if attested is not _NOT_SET and uid != attested:
            raise _Bad(DL_BAD_RECORD, f"resources disagree on {C.A_ATTESTED_UID} ({attested} vs {uid})")
        attested = uid
        for ss in rs.scope_spans:
            for sp in ss.spans:
                n_spans += 1
                val = _find_attr(sp.attributes, C.A_RECORDS)
                if val is None or not val.string_value:
                    raise _Bad(DL_MISSING, f"span {sp.name!r} has no {C.A_RECORDS} attribute")
                sid = sp.span_id.hex()
                tid = sp.trace_id.hex()
                if len(sid) != 16 or len(tid) != 32:
                    raise _Bad(DL_BAD_IDS, f"span {sp.name!r}: span/trace ID of wrong length")
                text = val.string_value
                texts.append(text)
                lines = text.split("\n")
                try:
                    # one parse per span: raw newlines only separate records
                    # (canonical JSON escapes them inside strings)
                    recs = loads("[" + text.replace("\n", ",") + "]")
                except _JSON_ERRORS as exc:
                    raise _Bad(DL_BAD_RECORD, f"span {sid}: records are not JSON lines: {exc}")
                if len(recs) != len(lines):
                    raise _Bad(DL_BAD_RECORD, f"span {sid}: records are not one JSON object per line")
                span_hook = None
                script_sid_ok = None
                for line, rec in zip(lines, recs):
                    if type(rec) is not dict:
                        raise _Bad(DL_BAD_RECORD, f"span {sid}: record is not a JSON object")
                    v = rec.get(C.R_VERSION)
                    if v != C.SCHEMA_VERSION:
                        rec = upgrade_record(rec)
                        if version is None or v < version:
                            version = v
                    try:
                        rcluster, node, seq, kind, hook, h, prev, ts = _JGET(rec)
                    except KeyError:
                        try:
                            rcluster, node, seq, kind, h, prev, ts = _JGET_NOHOOK(rec)
                        except KeyError as exc:
                            raise _Bad(DL_MISSING, f"span {sid}: record lacks field {exc}")
                        hook = None
                    chain = rec.get(C.R_CHAIN, NO_CHAIN)
                    if type(chain) is not str:
                        raise _Bad(DL_BAD_RECORD, f"span {sid} {kind} record: chain {chain!r} is not a string")
                    jrow = (rcluster, node, chain, seq, kind, hook, h, prev, line, attested)
                    if rcluster is None or node is None or seq is None or kind is None or h is None \
                            or prev is None:
                        raise _Bad(DL_MISSING, f"span {sid}: record has a null cluster/node/seq/kind/hash/prev")
                    try:
                        if not lo <= ts <= hi:
                            raise _Bad(DL_BAD_TIMESTAMP, f"span {sid} {kind} record: ts {ts} is outside "
                                       "[2000-01-01, receive time + 1 day]")
                    except TypeError:
                        raise _Bad(DL_BAD_RECORD, f"span {sid} {kind} record: ts {ts!r} is not integer ns")
                    if type(ts) is bool or type(ts) is float:
                        raise _Bad(DL_BAD_RECORD, f"span {sid} {kind} record: ts {ts!r} is not integer ns")
                    journal.append(jrow)
                    if kind == C.K_SCRIPT_STARTED or kind == C.K_SCRIPT_ENDED:
                        idx = rec.get(C.R_INDEX)
                        if type(hook) is not str or type(idx) is not int:
                            raise _Bad(DL_MISSING, f"span {sid}: {kind} record lacks hook/index")
                        if script_sid_ok != (hook, idx):
                            if C.script_span_id(hook, idx) != sid:
                                raise _Bad(DL_BAD_IDS, f"span {sid} carries records of script {idx} "
                                           f"of hook {hook}")
                            script_sid_ok = (hook, idx)
                        ent = scripts.get(sid)
                        if ent is None:
                            ent = scripts[sid] = [None, None, tid, False, hook]
                            if hook not in hooks and hook not in span_ctx:
                                span_ctx[hook] = _span_ctx(sp)
                        ent[0 if kind == C.K_SCRIPT_STARTED else 1] = rec
                    elif kind == C.K_HOOK_STARTED or kind == C.K_HOOK_ENDED:
                        if hook != sid:
                            raise _Bad(DL_BAD_IDS, f"span {sid} carries {kind} of hook {hook!r}")
                        ent = hooks.get(sid)
                        if ent is None:
                            ent = hooks[sid] = [None, None, tid, False]
                        ent[0 if kind == C.K_HOOK_STARTED else 1] = rec
                    elif kind == C.K_JOURNAL_ERROR:
                        n_errors += 1
                    elif kind == C.K_NODE_EVENT:
                        node_events.append((h, rcluster, node, ts, rec.get(C.R_STATE),
                                            rec.get(C.R_REASON), rec.get(C.R_SOURCE)))
                    if span_hook is None:
                        span_hook = hook
                    cluster = rcluster
                killed = False
                if sp.events:
                    span_node = journal[-1][1]
                    for eidx, ev in enumerate(sp.events):
                        ets = ev.time_unix_nano
                        if ets < lo or ets > hi:
                            raise _Bad(DL_BAD_TIMESTAMP, f"span {sid}: event {ev.name!r} time {ets} out of range")
                        if ev.name == C.E_KILLED:
                            killed = True
                        attrs = {kv.key: _any_value(kv.value) for kv in ev.attributes}
                        events.append((sid, span_hook, span_node, ets, ev.name,
                                       json.dumps(attrs, sort_keys=True, ensure_ascii=False), eidx))
                # The agent marks a killed runner's open script span and its
                # hook span with the A_KILLED attribute (the E_KILLED event may
                # be on one of them only).  Its marked spans always carry an
                # event or lack their end record; other spans are not walked
                # (a few microseconds per span is the whole budget).
                ent = scripts.get(sid) or hooks.get(sid)
                if ent is not None and not killed and (sp.events or ent[1] is None):
                    kv = _find_attr(sp.attributes, C.A_KILLED)
                    killed = kv is not None and kv.bool_value
                if killed and ent is not None:
                    ent[3] = True
    if not journal:
        raise _Bad(DL_MISSING, "no journal records in any span")
    if version is None:
        version = C.SCHEMA_VERSION
    dec = Decoded(n_spans=n_spans, cluster=cluster, schema_version=version,
                  records_digest=C.records_digest(texts), n_journal_errors=n_errors)
    dec.rows["journal"] = journal
    if node_events:
        dec.rows["node_events"] = node_events
    if events:
        dec.rows["span_events"] = events
    hook_rows = []
    ctx = {}
    max_end = None
    for hid, (s, e, tid, killed) in hooks.items():
        if s is None:
            continue  # only the ending: its journal rows are stored, no run row
        job = s.get(C.R_JOB) or {}
        if type(job) is not dict:
            raise _Bad(DL_BAD_RECORD, f"hook {hid}: job is not an object")
        context = s.get(C.R_CONTEXT)
        if type(context) is not str:
            raise _Bad(DL_MISSING, f"hook {hid}: hook_started lacks context")
        ctx[hid] = (context, job.get("job_id"), job.get("user"))
        start = s[C.R_TS]
        warnings = list(s.get(C.R_WARNINGS) or [])
        if e is not None:
            end = e[C.R_TS]
            dur = e.get(C.R_DURATION_NS)
            warnings += e.get(C.R_WARNINGS) or []
            status, n_scripts, failed = e.get(C.R_STATUS), e.get(C.R_N_SCRIPTS), e.get(C.R_FAILED_INDEX)
        else:
            end = dur = status = n_scripts = failed = None
            killed = True
        ref = end if end is not None else start
        if max_end is None or ref > max_end:
            max_end = ref
        hook_rows.append((
            hid, tid, s[C.R_CLUSTER], s[C.R_NODE], context, s.get(C.R_LAYOUT),
            job.get("job_id"), _int_or_none(job.get("restart_count")), job.get("user"),
            _int_or_none(job.get("uid")), job.get("partition"), job.get("nodelist"),
            job.get("account"), job.get("job_name"), job.get("array_job_id"),
            job.get("array_task_id"),
            job.get("gpus") or job.get("cuda_visible_devices") or job.get("rocr_visible_devices"),
            start, end, dur / 1e6 if type(dur) is int else None, status, n_scripts, failed,
            killed, warnings, version,
            received_ns, (received_ns - ref) / 1e6, stream_seq, attested))
    if hook_rows:
        dec.rows["hook_runs"] = hook_rows
    dec.max_end_ns = max_end
    script_rows = []
    for sid, (s, x, tid, killed, hid) in scripts.items():
        if s is not None and x is not None:
            try:
                cl, nd, idx, path, sha, size, mode, uid, mtime, start = _SGET(s)
                end, dur, exit_code, sig, tmo, refused, output, trunc = _XGET(x)
            except KeyError:
                pass
            else:
                if type(path) is not str:
                    raise _Bad(DL_MISSING, f"script span {sid}: record lacks path")
                context, job_id, user = ctx.get(hid) or span_ctx.get(hid, _NO_CTX)
                if x.get(C.R_CUT):
                    trunc = True  # cut in transit (the digest covers the full text)
                script_rows.append((
                    sid, hid, tid, cl, nd, context, job_id, user, idx, path, sha, size, mode, uid,
                    mtime, start, end, dur / 1e6 if type(dur) is int else None, exit_code, sig, tmo,
                    refused, killed, output, trunc, x.get(C.R_EXPORTED) or None, stream_seq, attested))
                continue
        base = s if s is not None else x
        context, job_id, user = ctx.get(hid) or span_ctx.get(hid, _NO_CTX)
        start = s[C.R_TS] if s is not None else None
        if x is not None:
            end = x[C.R_TS]
            dur = x.get(C.R_DURATION_NS)
            if start is None:
                start = end - dur if type(dur) is int else end
            exit_code, sig, tmo = x.get(C.R_EXIT), x.get(C.R_SIGNAL), x.get(C.R_TIMED_OUT)
            refused, output, trunc = x.get(C.R_REFUSED), x.get(C.R_OUTPUT), x.get(C.R_OUTPUT_TRUNCATED)
            exported = x.get(C.R_EXPORTED)
        else:
            end = dur = exit_code = sig = tmo = refused = output = trunc = exported = None
            killed = True
        path = base.get(C.R_PATH)
        if type(path) is not str:
            raise _Bad(DL_MISSING, f"script span {sid}: record lacks path")
        sv = s or {}
        script_rows.append((
            sid, hid, tid, base[C.R_CLUSTER], base[C.R_NODE], context, job_id, user,
            base[C.R_INDEX], path, sv.get(C.R_SHA256), sv.get(C.R_SIZE), sv.get(C.R_MODE),
            sv.get(C.R_UID), sv.get(C.R_MTIME), start, end,
            dur / 1e6 if type(dur) is int else None, exit_code, sig, tmo, refused, killed,
            output, trunc, exported or None, stream_seq, attested))
    if script_rows:
        dec.rows["script_runs"] = script_rows
    return dec


# ---------------------------------------------------------------- GPU metrics
#: gauge name -> gpu_samples column
GPU_COLUMNS = {
    C.M_GPU_UTILIZATION: "utilization",
    C.M_GPU_MEMORY_USAGE: "memory_used",
    C.M_GPU_MEMORY_LIMIT: "memory_total",
    C.M_GPU_POWER: "power_w",
    C.M_GPU_TEMPERATURE: "temperature_c",
    C.M_GPU_CLOCK_SM: "sm_clock_mhz",
    C.M_GPU_ECC_SBE: "ecc_sbe",
    C.M_GPU_ECC_DBE: "ecc_dbe",
    C.M_GPU_XID: "xid",
    C.M_GPU_RETIRED_PAGES: "retired_pages",
    C.M_GPU_THROTTLE: "throttle_reasons",
}
# The metric names stored before the semantic-conventions rename are read as
# before (contract.LEGACY_GPU_METRICS); hw.errors is one metric for both ECC
# columns, told apart by error.type (GPU_ERROR_COLUMNS).
GPU_COLUMNS.update({old: GPU_COLUMNS[key] for old, key in C.LEGACY_GPU_METRICS.items()})
GPU_ERROR_COLUMNS = {C.GPU_OTLP[k][3][C.A_ERROR_TYPE]: GPU_COLUMNS[k] for k in (C.M_GPU_ECC_SBE, C.M_GPU_ECC_DBE)}
_GPU_VALUE_COLS = ("utilization", "memory_used", "memory_total", "power_w", "temperature_c",
                   "sm_clock_mhz", "ecc_sbe", "ecc_dbe", "xid", "retired_pages", "throttle_reasons")
_GPU_INT_COLS = frozenset(("memory_used", "memory_total", "ecc_sbe", "ecc_dbe", "xid",
                           "retired_pages", "throttle_reasons"))


def _decode_metrics(payload, received_ns):
    req = _parse(ExportMetricsServiceRequest, payload)
    if not req.resource_metrics:
        raise _Bad(DL_NOT_OURS, "OTLP metrics request with no resource metrics")
    lo, hi = MIN_TS_NS, received_ns + MAX_FUTURE_NS
    samples = {}
    cluster = None
    for rm in req.resource_metrics:
        ra = _resource_attrs(rm.resource, "metrics")
        host, cl = ra.get(C.A_HOST_NAME), ra.get(C.A_CLUSTER)
        if host is None or cl is None or not host.string_value or not cl.string_value:
            raise _Bad(DL_MISSING, f"metrics resource lacks {C.A_HOST_NAME} or {C.A_CLUSTER}")
        sv = ra.get(C.A_SCHEMA_VERSION)
        if sv is not None:
            v = sv.int_value if sv.WhichOneof("value") == "int_value" else _int_or_none(sv.string_value)
            if v is not None and v > C.SCHEMA_VERSION:
                raise _Bad(DL_TOO_NEW, f"metrics schema version {v} > supported {C.SCHEMA_VERSION}")
        node, cluster = host.string_value, cl.string_value
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                col = GPU_COLUMNS.get(m.name)
                if col is None and m.name != C.M_HW_ERRORS:
                    continue  # other metrics are not ours to store
                which = m.WhichOneof("data")
                if which not in ("gauge", "sum"):
                    raise _Bad(DL_BAD_RECORD, f"metric {m.name}: expected a gauge, got {which}")
                for dp in getattr(m, which).data_points:
                    a = {kv.key: _any_value(kv.value) for kv in dp.attributes}
                    dcol = col or GPU_ERROR_COLUMNS.get(a.get(C.A_ERROR_TYPE))
                    if dcol is None or a.get(C.A_HW_TYPE, C.HW_TYPE_GPU) != C.HW_TYPE_GPU:
                        continue  # hw.errors/hw.power of another component or error type
                    idx = a.get(C.A_GPU_INDEX, a.get(C.LEGACY_A_GPU_INDEX))
                    if type(idx) is str:
                        idx = _int_or_none(idx)
                    if type(idx) is not int:
                        raise _Bad(DL_MISSING, f"metric {m.name}: data point lacks {C.A_GPU_INDEX}")
                    ts = dp.time_unix_nano
                    if ts < lo or ts > hi:
                        raise _Bad(DL_BAD_TIMESTAMP, f"metric {m.name}: time {ts} out of range")
                    key = (cluster, node, idx, ts)
                    row = samples.get(key)
                    if row is None:
                        job = a.get(C.A_JOB_ID)
                        row = samples[key] = {
                            "uuid": a.get(C.A_GPU_ID), "model": a.get(C.A_GPU_MODEL),
                            "job_id": None if job is None else str(job),
                            "source": a.get(C.A_GPU_SOURCE)}
                    kind = dp.WhichOneof("value")
                    val = dp.as_int if kind == "as_int" else dp.as_double if kind == "as_double" else None
                    if val is not None and dcol in _GPU_INT_COLS:
                        val = int(val)
                    elif val is not None:
                        val = float(val)
                    row[dcol] = val
    if not samples:
        raise _Bad(DL_NOT_OURS, "metrics request has no hookscope GPU gauges")
    rows = []
    for (cl, node, idx, ts), r in samples.items():
        rows.append((cl, node, ts, idx, r["uuid"], r["model"], r["job_id"],
                     *(r.get(c) for c in _GPU_VALUE_COLS), r["source"]))
    dec = Decoded(n_spans=0, cluster=cluster)
    dec.rows["gpu_samples"] = rows
    return dec

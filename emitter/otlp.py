"""Journal records -> OTLP protobuf.  Pure: no I/O, no clock, no globals.

One journal file (one hook invocation) becomes one ``ExportTraceServiceRequest``:
a hook span (span ID = hook ID) with one child span per script.  Every span
carries, in ``contract.A_RECORDS``, the raw journal lines that built it, so
the collector can load the store (and verify the hash chain) from the spans
alone; every record of the file lands in exactly one span:

* a script span owns its ``script_started`` + ``script_ended`` records;
* the hook span owns every other record of the file (``hook_started``,
  ``hook_ended``, ``spool_evicted``, ``script_skipped``);
* a standalone file (no ``hook_started``) gives one span per record:
  ``node_event`` -> SPAN_NODE_EVENT, ``journal_error``/other -> SPAN_JOURNAL.

GPU samples become one ``ExportMetricsServiceRequest`` of gauges
(:mod:`emitter.otlp_metrics`); the conversion to SDK ReadableSpans (for
tests and SDK users) is in :mod:`emitter.otlp_sdk`; one request into messages (and their
``Nats-Msg-Id`` keys) in :mod:`emitter.otlp_split`.  All are re-exported here.

Both encoders take plain dicts so the collector and tests can use them without
the agent; ``entries`` are ``(raw_line, record)`` pairs (the raw line is kept
verbatim: re-serialising a record whose hash is wrong would hide the damage),
or bare record dicts, whose raw line is then ``contract.canonical_json``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from emitter import __version__
from emitter import contract as c
from emitter.otlp_values import (  # noqa: F401
    SCOPE_NAME, _any, _attrs, _event, _from_any, _resource, attributes_dict)
# Re-exported: callers keep importing these from here.  The helpers those
# modules share with this one live in emitter.otlp_values (no import cycle).
from emitter.otlp_metrics import (  # noqa: F401
    GPU_UNITS, decode_metrics, encode_metrics, metrics_request, samples_from_metrics)
from emitter.otlp_sdk import sdk_spans  # noqa: F401
from emitter.otlp_split import (  # noqa: F401
    _ENVELOPE, HEADER_ROOM, _records_texts, journal_lines, message_key, records_key, resource_of,
    split_requests)

# Lengths long values are cut to, in turn, when one span is too big for a message.
_OUTPUT_CAPS = (65536, 16384, 4096, 1024, 256, 0)



# ---------------------------------------------------------------- entries
def _entries(items) -> list[tuple[str, dict]]:
    out = []
    for it in items:
        if isinstance(it, dict):
            out.append((c.canonical_json(it), it))
        else:
            raw, rec = it
            out.append((raw.rstrip("\n"), rec))
    return out


def hook_trace_id(cluster, job: dict | None, hook_id: str) -> str:
    """One trace per job; a hook with no job ID gets a trace of its own."""
    job = job or {}
    if job.get("job_id"):
        return c.trace_id(cluster, job["job_id"], _int(job.get("restart_count")))
    return c.trace_id(cluster, "hook:" + str(hook_id), 0)


def _int(v, default=0) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _hex_id(value, length: int) -> bytes:
    """Span/trace IDs from hex; anything malformed is hashed into shape
    rather than rejected (a damaged record must still reach the store)."""
    s = str(value or "")
    try:
        if len(s) == length * 2:
            b = bytes.fromhex(s)
            if any(b):
                return b
    except ValueError:
        pass
    import hashlib

    return hashlib.sha256(s.encode("utf-8", "replace")).digest()[:length]


def _gpu_event_attrs(samples: Sequence[dict]) -> dict:
    """One snapshot event for all of a hook's GPUs: parallel arrays, one
    element per GPU (OTel attribute arrays are homogeneous and null-free, so a
    field missing on any GPU is left out, and numbers are floats if any is)."""
    samples = sorted(samples, key=lambda s: s.get("index") or 0)
    a = {}
    for attr, key in ((c.A_GPU_INDEX, "index"), (c.A_GPU_ID, "uuid"), (c.A_GPU_MODEL, "model"),
                      (c.A_GPU_VENDOR, "vendor"), (c.A_GPU_SOURCE, "source")):
        vals = [s.get(key) for s in samples]
        if all(v is not None for v in vals):
            a[attr] = vals
    for name in c.GPU_METRICS:
        vals = [(s.get("metrics") or {}).get(name) for s in samples]
        if vals and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            a[name] = [float(v) for v in vals] if any(isinstance(v, float) for v in vals) else vals
    return a


# ---------------------------------------------------------------- spans
def trace_request(items: Iterable, *, node: str | None = None, cluster: str | None = None,
                  abandoned_ts: int | None = None, gpu_snapshots: Sequence[dict] = (),
                  output_cap: int | None = None) -> ExportTraceServiceRequest:
    """The request for one journal file.

    ``abandoned_ts``: the file is abandoned (its runner died); a started
    script with no end becomes an ERROR span ending at that time with the
    runner-killed event, and the hook span ends there too.
    ``gpu_snapshots``: GPU sample dicts taken when the agent saw this hook;
    each becomes an E_GPU_SNAPSHOT event on the hook span.
    ``output_cap``: cut every output (events and records) to this many
    trailing characters, marking it truncated (used by :func:`encode_trace`
    to fit the message limit).
    """
    entries = _entries(items)
    if output_cap is not None:
        entries = [_cap_output(raw, rec, output_cap) for raw, rec in entries]
    first = entries[0][1] if entries else {}
    node = node if node is not None else first.get(c.R_NODE, "")
    cluster = cluster if cluster is not None else first.get(c.R_CLUSTER, "")
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    _resource(rs.resource, node, cluster)
    ss = rs.scope_spans.add()
    ss.scope.CopyFrom(InstrumentationScope(name=SCOPE_NAME, version=__version__))
    if any(rec.get(c.R_KIND) == c.K_HOOK_STARTED for _, rec in entries) or any(
            rec.get(c.R_KIND) in (c.K_SCRIPT_STARTED, c.K_SCRIPT_ENDED, c.K_HOOK_ENDED)
            for _, rec in entries):
        _hook_spans(ss.spans, entries, cluster, abandoned_ts, gpu_snapshots)
    else:
        for raw, rec in entries:
            _standalone_span(ss.spans.add(), raw, rec, cluster)
    return req


def _hook_spans(spans, entries, cluster, abandoned_ts, gpu_snapshots) -> None:
    started = ended = None
    scripts: dict[int, dict] = {}  # index -> {"start": (raw, rec), "end": (raw, rec)}
    hook_own: list[tuple[str, dict]] = []
    for raw, rec in entries:
        kind = rec.get(c.R_KIND)
        if kind in (c.K_SCRIPT_STARTED, c.K_SCRIPT_ENDED) and isinstance(rec.get(c.R_INDEX), int):
            slot = scripts.setdefault(rec[c.R_INDEX], {})
            key = "start" if kind == c.K_SCRIPT_STARTED else "end"
            if key in slot:  # a second record for the same slot: keep it with the hook
                hook_own.append((raw, rec))
            else:
                slot[key] = (raw, rec)
            continue
        if kind == c.K_HOOK_STARTED and started is None:
            started = rec
        elif kind == c.K_HOOK_ENDED and ended is None:
            ended = rec
        hook_own.append((raw, rec))

    recs = [rec for _, rec in entries]
    hook_id = next((r.get(c.R_HOOK_ID) for r in recs if r.get(c.R_HOOK_ID)), "")
    job = (started or {}).get(c.R_JOB) or {}
    tid = _hex_id(hook_trace_id(cluster, job, hook_id), 16)
    hook_sid = _hex_id(hook_id, 8)
    all_ts = [_int(r.get(c.R_TS)) for r in recs if r.get(c.R_TS) is not None]
    last_ts = max(all_ts) if all_ts else 0
    end_of_abandoned = max(_int(abandoned_ts), last_ts) if abandoned_ts is not None else last_ts

    hook = spans.add()
    hook.trace_id = tid
    hook.span_id = hook_sid
    hook.kind = Span.SPAN_KIND_INTERNAL
    context = (started or {}).get(c.R_CONTEXT) or "hook"
    hook.name = str(context)
    hook.start_time_unix_nano = _int((started or {}).get(c.R_TS), min(all_ts) if all_ts else 0)
    hook.end_time_unix_nano = _int(ended.get(c.R_TS)) if ended else end_of_abandoned
    status = ended.get(c.R_STATUS) if ended else None
    hattrs = {
        c.A_SPAN_TYPE: c.SPAN_HOOK,
        c.A_CONTEXT: (started or {}).get(c.R_CONTEXT),
        c.A_LAYOUT: (started or {}).get(c.R_LAYOUT),
        c.A_HOOK_ID: hook_id,
        c.A_HOOK_STATUS: status,
        c.A_N_SCRIPTS: ended.get(c.R_N_SCRIPTS) if ended else len(scripts),
    }
    for key, attr in c.JOB_ATTRS.items():
        hattrs[attr] = job.get(key)
    hattrs[c.A_RECORDS] = "\n".join(raw for raw, _ in hook_own)
    _attrs(hook.attributes, hattrs)
    for raw, rec in hook_own:
        if rec.get(c.R_KIND) == c.K_SPOOL_EVICTED:
            _event(hook, c.E_EVICTED, rec.get(c.R_TS), {
                c.R_EVICTED_FILES: rec.get(c.R_EVICTED_FILES),
                c.R_EVICTED_BYTES: rec.get(c.R_EVICTED_BYTES),
                c.R_EVICTED_SEQS: rec.get(c.R_EVICTED_SEQS)})
    if gpu_snapshots:
        ts = max(_int(s.get("ts")) for s in gpu_snapshots) or hook.start_time_unix_nano
        _event(hook, c.E_GPU_SNAPSHOT, ts, _gpu_event_attrs(gpu_snapshots))
    killed_any = False
    failed = status not in (None, 0)
    for index in sorted(scripts):
        slot = scripts[index]
        killed = "end" not in slot and abandoned_ts is not None
        killed_any |= killed
        failed |= _script_span(spans.add(), tid, hook_sid, hook_id, index, slot, killed,
                               end_of_abandoned)
    if ended is None and abandoned_ts is not None:
        _attrs(hook.attributes, {c.A_KILLED: True})
        hook.status.code = Status.STATUS_CODE_ERROR
        hook.status.message = "runner killed before the hook ended" if killed_any else \
            "runner died before the hook ended"
        _event(hook, c.E_KILLED, end_of_abandoned, {})
    elif failed or status not in (None, 0):
        hook.status.code = Status.STATUS_CODE_ERROR
        hook.status.message = f"exit status {status}"


def _script_span(span, tid, hook_sid, hook_id, index, slot, killed, end_ts) -> bool:
    """Fill one script span; returns True when the script failed."""
    s_raw, s_rec = slot.get("start", (None, {}))
    e_raw, e_rec = slot.get("end", (None, {}))
    span.trace_id = tid
    span.span_id = _hex_id(c.script_span_id(hook_id, index), 8)
    span.parent_span_id = hook_sid
    span.kind = Span.SPAN_KIND_INTERNAL
    path = s_rec.get(c.R_PATH) or e_rec.get(c.R_PATH) or ""
    span.name = str(path).rsplit("/", 1)[-1] or f"script {index}"
    start = _int(s_rec.get(c.R_TS), _int(e_rec.get(c.R_TS)))
    span.start_time_unix_nano = start
    span.end_time_unix_nano = _int(e_rec.get(c.R_TS)) if e_rec else max(end_ts, start)
    exit_code = e_rec.get(c.R_EXIT) if e_rec else None
    attrs = {
        c.A_SPAN_TYPE: c.SPAN_SCRIPT,
        c.A_EXE_PATH: path,
        c.A_SCRIPT_INDEX: index,
        c.A_SCRIPT_SHA256: s_rec.get(c.R_SHA256),
        c.A_SCRIPT_SIZE: s_rec.get(c.R_SIZE),
        c.A_SCRIPT_MODE: s_rec.get(c.R_MODE),
        c.A_SCRIPT_UID: s_rec.get(c.R_UID),
        c.A_SCRIPT_MTIME: s_rec.get(c.R_MTIME),
        c.A_EXIT_CODE: exit_code,
        c.A_SIGNAL: e_rec.get(c.R_SIGNAL),
        c.A_TIMED_OUT: bool(e_rec.get(c.R_TIMED_OUT)) if e_rec else None,
        c.A_REFUSED: e_rec.get(c.R_REFUSED),
        c.A_EXPORTED: list(e_rec.get(c.R_EXPORTED) or []) or None,
        c.A_KILLED: True if killed else None,
        c.A_RECORDS: "\n".join(r for r in (s_raw, e_raw) if r is not None),
    }
    _attrs(span.attributes, attrs)
    end = span.end_time_unix_nano
    failed = False
    if killed:
        failed = True
        _event(span, c.E_KILLED, end, {c.R_PATH: path})
        span.status.code = Status.STATUS_CODE_ERROR
        span.status.message = "runner killed while the script ran"
        return True
    if e_rec.get(c.R_TIMED_OUT):
        _event(span, c.E_TIMEOUT, end, {})
    if e_rec.get(c.R_SIGNAL) is not None:
        _event(span, c.E_SIGNAL, end, {c.R_SIGNAL: e_rec.get(c.R_SIGNAL)})
    if e_rec.get(c.R_REFUSED):
        _event(span, c.E_REFUSED, end, {c.R_REASON: e_rec.get(c.R_REFUSED)})
    if e_rec and (exit_code != 0 or e_rec.get(c.R_REFUSED)):
        failed = True
        span.status.code = Status.STATUS_CODE_ERROR
        span.status.message = (f"refused: {e_rec.get(c.R_REFUSED)}" if e_rec.get(c.R_REFUSED)
                               else f"exit code {exit_code}")
    if e_rec.get(c.R_OUTPUT):
        _event(span, c.E_OUTPUT, end, {c.EA_OUTPUT_TEXT: e_rec.get(c.R_OUTPUT),
                                       c.EA_OUTPUT_TRUNCATED: bool(e_rec.get(c.R_OUTPUT_TRUNCATED))})
    return failed


def _standalone_span(span, raw, rec, cluster) -> None:
    kind = rec.get(c.R_KIND)
    own = str(rec.get(c.R_HASH) or "")[:16] or str(rec.get(c.R_SEQ))
    key = rec.get(c.R_HOOK_ID) or own  # write_standalone: one file ID for the file's records
    span.trace_id = _hex_id(c.trace_id(cluster, "hook:" + str(key), 0), 16)
    span.span_id = _hex_id(own, 8)  # unique per record, stable across retries
    span.kind = Span.SPAN_KIND_INTERNAL
    span.start_time_unix_nano = span.end_time_unix_nano = _int(rec.get(c.R_TS))
    if kind == c.K_NODE_EVENT:
        span.name = f"node {rec.get(c.R_STATE) or 'event'}"
        attrs = {c.A_SPAN_TYPE: c.SPAN_NODE_EVENT}  # state/reason/source: in A_RECORDS
    else:
        span.name = str(kind or "journal")
        attrs = {c.A_SPAN_TYPE: c.SPAN_JOURNAL}
        if kind == c.K_JOURNAL_ERROR:
            _event(span, c.E_JOURNAL_DAMAGED, span.start_time_unix_nano,
                   {c.R_PATH: rec.get(c.R_PATH), c.R_REASON: rec.get(c.R_REASON)})
            span.status.code = Status.STATUS_CODE_ERROR
            span.status.message = str(rec.get(c.R_REASON) or "journal damaged")
    attrs[c.A_RECORDS] = raw
    _attrs(span.attributes, attrs)


def _cap_output(raw: str, rec: dict, cap: int) -> tuple[str, dict]:
    """Cut the record's long values to ``cap`` characters for transit.

    A record with ``contract.R_DIGESTS`` (every record of a current runner
    with a long value) stays verifiable: its hash covers the digests, and
    ``R_CUT`` (outside the hash) names what was cut and its full length.
    Output keeps its tail (where the error is), other values their head.
    A record without digests (older runners) can only have its output cut:
    it keeps its original hash, which verify then reports as altered.
    """
    dg = rec.get(c.R_DIGESTS)
    if isinstance(dg, dict) and dg:
        new = None
        for path in dg:
            top, _, sub = str(path).partition(".")
            holder = rec if not sub else rec.get(top)
            key = top if not sub else sub
            if not isinstance(holder, dict):
                continue
            v = holder.get(key)
            if not isinstance(v, str) or len(v) <= cap:
                continue
            if new is None:
                new = dict(rec)
                new[c.R_CUT] = dict(rec.get(c.R_CUT) or {})
            if sub:
                if new[top] is rec[top]:
                    new[top] = dict(rec[top])
                holder = new[top]
            else:
                holder = new
            holder[key] = (v[len(v) - cap:] if cap else "") if path == c.R_OUTPUT else v[:cap]
            new[c.R_CUT].setdefault(path, len(v))
        if new is None:
            return raw, rec
        return c.canonical_json(new), new
    out = rec.get(c.R_OUTPUT)
    if not isinstance(out, str) or len(out) <= cap:
        return raw, rec
    rec = dict(rec)
    rec[c.R_OUTPUT] = out[len(out) - cap:] if cap else ""
    rec[c.R_OUTPUT_TRUNCATED] = True
    return c.canonical_json(rec), rec


def _largest_span(req) -> int:
    return max((sp.ByteSize() for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans),
               default=0)


def fitted_trace(items: Iterable, *, max_bytes: int = c.MAX_MESSAGE_BYTES, **kw) -> ExportTraceServiceRequest:
    """:func:`trace_request` whose every span fits one message of ``max_bytes``.

    A request too big as a whole is split into several messages by
    :func:`split_requests` (span by span); only a span too big on its own gets
    its long values cut (:func:`_cap_output`, verifiable through the records'
    digests).  When even that does not fit (thousands of skipped scripts in
    one hook span), the request is returned as is and publishing reports the
    size error (the agent records a journal_error and counts it as stuck).
    """
    items = _entries(items)
    req = trace_request(items, **kw)
    limit = max_bytes - HEADER_ROOM - _ENVELOPE
    for cap in _OUTPUT_CAPS:
        if _largest_span(req) <= limit:
            break
        req = trace_request(items, output_cap=cap, **kw)
    return req


def encode_trace(items: Iterable, **kw) -> bytes:
    """Serialised :func:`fitted_trace`: the bytes of one message."""
    return fitted_trace(items, **kw).SerializeToString()


def decode_trace(data: bytes) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    req.ParseFromString(data)
    return req

"""PURE: one OTLP trace request (a ``hookscope.spans.*`` message) -> rows of
journal, hook_runs, script_runs, span_events and node_events.  No I/O.

The rows come from the raw journal lines every span carries in
``contract.A_RECORDS`` (one JSON parse per span), not from span attributes:
the lines are what the node hashed, so they are stored verbatim.  Steps:

1. ``_span``: per span, its IDs and records (``_records``: one journal row
   per record, and each hook/script record filed under its run), its events;
2. ``_hook_rows`` and ``_script_rows``: one row per run from its started and
   ended records.

Speed: this is the collector's hot loop (a few microseconds per span is the
whole budget), so the per-record work is tuple building and type checks on
locals; rare cases (bad timestamps, upgrades) leave the loop for a helper.

The common message is decoded by ``collector._fastspans`` (C, built by
setup.py; ``decode_traces`` tries it first).  It answers only when its rows
are the ones ``decode_traces_py`` gives, and None for anything else (links,
killed runners, upgrades, runs split across messages, node events, every
dead letter), so this file stays the reference: tests/collector/test_fastspans.py
holds the two equal on generated, mutated and fuzzed messages.
"""

from __future__ import annotations

import functools
import json
from operator import itemgetter

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.decode_util import (
    MAX_FUTURE_NS, MIN_TS_NS, NO_CHAIN, _any_value, _attested_uid, _Bad, _find_attr, _int_or_none, _parse,
    _resource_attrs, upgrade_record)
from collector.decoded import DL_BAD_IDS, DL_BAD_RECORD, DL_BAD_TIMESTAMP, DL_MISSING, DL_NOT_OURS, Decoded
from emitter import contract as C

_JGET = itemgetter(C.R_CLUSTER, C.R_NODE, C.R_SEQ, C.R_KIND, C.R_HOOK_ID, C.R_HASH, C.R_PREV, C.R_TS)
_JGET_NOHOOK = itemgetter(C.R_CLUSTER, C.R_NODE, C.R_SEQ, C.R_KIND, C.R_HASH, C.R_PREV, C.R_TS)
_SGET = itemgetter(C.R_CLUSTER, C.R_NODE, C.R_INDEX, C.R_PATH, C.R_SHA256, C.R_SIZE, C.R_MODE, C.R_UID,
                   C.R_MTIME, C.R_TS)
_XGET = itemgetter(C.R_TS, C.R_DURATION_NS, C.R_EXIT, C.R_SIGNAL, C.R_TIMED_OUT, C.R_REFUSED, C.R_OUTPUT,
                   C.R_OUTPUT_TRUNCATED)
#: context of scripts whose hook_started is not in the same message
_NO_CTX = ("unknown", None, None)
_NOT_SET = object()
#: the keys of a hook_started record's job object that _hook_rows reads, in
#: the order _fastspans.configure wants them
JOB_KEYS = ("job_id", "restart_count", "user", "uid", "partition", "nodelist", "account", "job_name",
            "array_job_id", "array_task_id", "gpus", "cuda_visible_devices", "rocr_visible_devices")

try:
    from collector import _fastspans
    _NOT_BUILT = None
except ImportError as exc:  # not built (no compiler): the same rows, from Python
    _fastspans = None
    _NOT_BUILT = str(exc)
_fast_loads = None  # the JSON decoder _fastspans was configured with
#: a span event's attributes as stored (span_events.attributes), in both paths
_EVENT_JSON = functools.partial(json.dumps, sort_keys=True, ensure_ascii=False)


def decoder_in_use():
    """(which span decoder runs, why not the C one or None), for the collector's start-up log."""
    if _fastspans is not None:
        return "C (collector._fastspans), Python for the rare shapes", None
    return "Python only", (f"collector._fastspans is not built: {_NOT_BUILT}; decoding takes about twice "
                           "the CPU. Reinstall with gcc and the Python headers: pip install -e .")


def fast_decoder(loads):
    """``_fastspans.decode`` set up to parse records with ``loads`` (the
    decoder the Python path uses), or None when the extension is missing."""
    global _fast_loads
    if _fastspans is None:
        return None
    if _fast_loads is not loads:
        names = {n: NO_CHAIN if n == "NO_CHAIN" else getattr(C, n) for n in _fastspans.names()}
        _fastspans.configure(loads, _EVENT_JSON, names, JOB_KEYS, C.SCHEMA_VERSION, MIN_TS_NS, MAX_FUTURE_NS)
        _fast_loads = loads
    return _fastspans.decode


class _Acc:
    """What the spans of one message add up to while they are walked."""

    __slots__ = ("lo", "hi", "loads", "json_errors", "hooks", "scripts", "span_ctx", "journal", "events",
                 "node_events", "texts", "n_spans", "version", "cluster", "n_errors", "attested")

    def __init__(self, received_ns, loads, json_errors):
        self.lo, self.hi = MIN_TS_NS, received_ns + MAX_FUTURE_NS
        self.loads, self.json_errors = loads, json_errors
        self.hooks = {}      # hook_id -> [started, ended, trace_id, killed]
        self.scripts = {}    # span_id -> [started, ended, trace_id, killed, hook_id]
        self.span_ctx = {}   # hook_id -> context of scripts split from their hook span
        self.journal, self.events, self.node_events, self.texts = [], [], [], []
        self.n_spans = 0
        self.version = None
        self.cluster = None
        self.n_errors = 0    # journal_error records (damage, untrusted or stuck files on the node)
        self.attested = _NOT_SET  # the uid the node's agent attests wrote the records (one per message)

    def attest(self, uid):
        if self.attested is not _NOT_SET and uid != self.attested:
            raise _Bad(DL_BAD_RECORD, f"resources disagree on {C.A_ATTESTED_UID} ({self.attested} vs {uid})")
        self.attested = uid


def decode_traces(payload, stream_seq, received_ns, loads, json_errors) -> Decoded:
    """Rows of one trace message; raises ``_Bad`` for a dead letter.  ``loads``
    parses a JSON array (``json_errors``: what it raises on bad input)."""
    fast = fast_decoder(loads)
    got = fast(payload, stream_seq, received_ns) if fast is not None else None
    if got is None:
        return decode_traces_py(payload, stream_seq, received_ns, loads, json_errors)
    n_spans, cluster, digest, n_errors, journal, events, hook_rows, script_rows, max_end = got
    dec = Decoded(n_spans=n_spans, cluster=cluster, schema_version=C.SCHEMA_VERSION, records_digest=digest,
                  n_journal_errors=n_errors, max_end_ns=max_end)
    dec.rows["journal"] = journal
    if events:
        dec.rows["span_events"] = events
    if hook_rows:
        dec.rows["hook_runs"] = hook_rows
    if script_rows:
        dec.rows["script_runs"] = script_rows
    return dec


def decode_traces_py(payload, stream_seq, received_ns, loads, json_errors) -> Decoded:
    """``decode_traces`` in Python: the reference, every dead letter and every
    shape the C path leaves to it."""
    req = _parse(ExportTraceServiceRequest, payload)
    if not req.resource_spans:
        raise _Bad(DL_NOT_OURS, "OTLP request with no resource spans")
    acc = _Acc(received_ns, loads, json_errors)
    for rs in req.resource_spans:
        acc.attest(_attested_uid(_resource_attrs(rs.resource, "spans")))
        for ss in rs.scope_spans:
            for sp in ss.spans:
                _span(acc, sp)
    if not acc.journal:
        raise _Bad(DL_MISSING, "no journal records in any span")
    version = C.SCHEMA_VERSION if acc.version is None else acc.version
    dec = Decoded(n_spans=acc.n_spans, cluster=acc.cluster, schema_version=version,
                  records_digest=C.records_digest(acc.texts), n_journal_errors=acc.n_errors)
    dec.rows["journal"] = acc.journal
    if acc.node_events:
        dec.rows["node_events"] = acc.node_events
    if acc.events:
        dec.rows["span_events"] = acc.events
    hook_rows, ctx, dec.max_end_ns = _hook_rows(acc.hooks, version, received_ns, stream_seq, acc.attested)
    if hook_rows:
        dec.rows["hook_runs"] = hook_rows
    script_rows = _script_rows(acc.scripts, ctx, acc.span_ctx, stream_seq, acc.attested)
    if script_rows:
        dec.rows["script_runs"] = script_rows
    return dec


def _span(acc, sp):
    """One span: its records, its events, and whether the runner was killed in it."""
    acc.n_spans += 1
    val = _find_attr(sp.attributes, C.A_RECORDS)
    text = val.string_value if val is not None else None  # each access copies the string out
    if not text:
        raise _Bad(DL_MISSING, f"span {sp.name!r} has no {C.A_RECORDS} attribute")
    sid = sp.span_id.hex()
    tid = sp.trace_id.hex()
    if len(sid) != 16 or len(tid) != 32:
        raise _Bad(DL_BAD_IDS, f"span {sp.name!r}: span/trace ID of wrong length")
    acc.texts.append(text)
    lines = text.split("\n")
    try:
        # one parse per span: raw newlines only separate records
        # (canonical JSON escapes them inside strings)
        recs = acc.loads("[" + text.replace("\n", ",") + "]")
    except acc.json_errors as exc:
        raise _Bad(DL_BAD_RECORD, f"span {sid}: records are not JSON lines: {exc}")
    if len(recs) != len(lines):
        raise _Bad(DL_BAD_RECORD, f"span {sid}: records are not one JSON object per line")
    span_hook = _records(acc, sp, sid, tid, lines, recs)
    events = sp.events
    killed = _span_events(acc, events, sid, span_hook) if events else False
    # The agent marks a killed runner's open script span and its hook span
    # with the A_KILLED attribute (the E_KILLED event may be on one of them
    # only).  Its marked spans always carry an event or lack their end
    # record; other spans are not walked (a few microseconds per span is the
    # whole budget).
    ent = acc.scripts.get(sid) or acc.hooks.get(sid)
    if ent is not None and not killed and (events or ent[1] is None):
        kv = _find_attr(sp.attributes, C.A_KILLED)
        killed = kv is not None and kv.bool_value
    if killed and ent is not None:
        ent[3] = True


def _records(acc, sp, sid, tid, lines, recs, R_VERSION=C.R_VERSION, SCHEMA_VERSION=C.SCHEMA_VERSION,
             R_CHAIN=C.R_CHAIN, R_INDEX=C.R_INDEX, SCRIPT_STARTED=C.K_SCRIPT_STARTED,
             SCRIPT_ENDED=C.K_SCRIPT_ENDED, HOOK_STARTED=C.K_HOOK_STARTED, HOOK_ENDED=C.K_HOOK_ENDED):
    """One journal row per record; hook and script records filed under their
    run.  Returns the hook ID of the span's first record.  (The keyword
    defaults are the contract's names bound once: this loop runs per record.)"""
    lo, hi, attested = acc.lo, acc.hi, acc.attested
    journal, scripts, hooks = acc.journal, acc.scripts, acc.hooks
    span_hook = None
    script_sid_ok = None
    for line, rec in zip(lines, recs):
        if type(rec) is not dict:
            raise _Bad(DL_BAD_RECORD, f"span {sid}: record is not a JSON object")
        v = rec.get(R_VERSION)
        if v != SCHEMA_VERSION:
            rec = upgrade_record(rec)
            if acc.version is None or v < acc.version:
                acc.version = v
        try:
            rcluster, node, seq, kind, hook, h, prev, ts = _JGET(rec)
        except KeyError:
            try:
                rcluster, node, seq, kind, h, prev, ts = _JGET_NOHOOK(rec)
            except KeyError as exc:
                raise _Bad(DL_MISSING, f"span {sid}: record lacks field {exc}")
            hook = None
        chain = rec.get(R_CHAIN, NO_CHAIN)
        if type(chain) is not str:
            raise _Bad(DL_BAD_RECORD, f"span {sid} {kind} record: chain {chain!r} is not a string")
        if rcluster is None or node is None or seq is None or kind is None or h is None or prev is None:
            raise _Bad(DL_MISSING, f"span {sid}: record has a null cluster/node/seq/kind/hash/prev")
        if type(ts) is not int or not lo <= ts <= hi:
            _bad_ts(sid, kind, ts, lo, hi)
        journal.append((rcluster, node, chain, seq, kind, hook, h, prev, line, attested))
        if kind == SCRIPT_STARTED or kind == SCRIPT_ENDED:
            idx = rec.get(R_INDEX)
            if type(hook) is not str or type(idx) is not int:
                raise _Bad(DL_MISSING, f"span {sid}: {kind} record lacks hook/index")
            if script_sid_ok != (hook, idx):
                if C.script_span_id(hook, idx) != sid:
                    raise _Bad(DL_BAD_IDS, f"span {sid} carries records of script {idx} of hook {hook}")
                script_sid_ok = (hook, idx)
            ent = scripts.get(sid)
            if ent is None:
                ent = scripts[sid] = [None, None, tid, False, hook]
                if hook not in hooks and hook not in acc.span_ctx:
                    acc.span_ctx[hook] = _span_ctx(sp)
            ent[0 if kind == SCRIPT_STARTED else 1] = rec
        elif kind == HOOK_STARTED or kind == HOOK_ENDED:
            if hook != sid:
                raise _Bad(DL_BAD_IDS, f"span {sid} carries {kind} of hook {hook!r}")
            ent = hooks.get(sid)
            if ent is None:
                ent = hooks[sid] = [None, None, tid, False]
            ent[0 if kind == HOOK_STARTED else 1] = rec
        elif kind == C.K_JOURNAL_ERROR:
            acc.n_errors += 1
        elif kind == C.K_NODE_EVENT:
            acc.node_events.append((h, rcluster, node, ts, rec.get(C.R_STATE), rec.get(C.R_REASON),
                                    rec.get(C.R_SOURCE)))
        if span_hook is None:
            span_hook = hook
    acc.cluster = rcluster  # the last record's (a span has at least one)
    return span_hook


def _bad_ts(sid, kind, ts, lo, hi):
    """Raise the dead letter for a record timestamp that is not integer ns in range."""
    try:
        if not lo <= ts <= hi:
            raise _Bad(DL_BAD_TIMESTAMP, f"span {sid} {kind} record: ts {ts} is outside "
                       "[2000-01-01, receive time + 1 day]")
    except TypeError:
        pass
    raise _Bad(DL_BAD_RECORD, f"span {sid} {kind} record: ts {ts!r} is not integer ns")


def _span_events(acc, events, sid, span_hook):
    """span_events rows of one span; True when one says the runner was killed."""
    lo, hi = acc.lo, acc.hi
    span_node = acc.journal[-1][1]
    killed = False
    for eidx, ev in enumerate(events):
        ets = ev.time_unix_nano
        if ets < lo or ets > hi:
            raise _Bad(DL_BAD_TIMESTAMP, f"span {sid}: event {ev.name!r} time {ets} out of range")
        if ev.name == C.E_KILLED:
            killed = True
        attrs = {kv.key: _any_value(kv.value) for kv in ev.attributes}
        acc.events.append((sid, span_hook, span_node, ets, ev.name, _EVENT_JSON(attrs), eidx))
    return killed


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


def _hook_rows(hooks, version, received_ns, stream_seq, attested):
    """(hook_runs rows, hook_id -> (context, job_id, user), latest end) of the
    hooks whose hook_started is in the message."""
    rows = []
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
        rows.append((
            hid, tid, s[C.R_CLUSTER], s[C.R_NODE], context, s.get(C.R_LAYOUT),
            job.get("job_id"), _int_or_none(job.get("restart_count")), job.get("user"),
            _int_or_none(job.get("uid")), job.get("partition"), job.get("nodelist"),
            job.get("account"), job.get("job_name"), job.get("array_job_id"),
            job.get("array_task_id"),
            job.get("gpus") or job.get("cuda_visible_devices") or job.get("rocr_visible_devices"),
            start, end, dur / 1e6 if type(dur) is int else None, status, n_scripts, failed,
            killed, warnings, version,
            received_ns, (received_ns - ref) / 1e6, stream_seq, attested))
    return rows, ctx, max_end


def _script_rows(scripts, ctx, span_ctx, stream_seq, attested):
    """script_runs rows: complete runs (started and ended) on the fast path,
    the rest (a killed runner, a run split across messages) by ``_partial_script``."""
    rows = []
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
                rows.append((
                    sid, hid, tid, cl, nd, context, job_id, user, idx, path, sha, size, mode, uid,
                    mtime, start, end, dur / 1e6 if type(dur) is int else None, exit_code, sig, tmo,
                    refused, killed, output, trunc, x.get(C.R_EXPORTED) or None, stream_seq, attested))
                continue
        rows.append(_partial_script(sid, s, x, tid, killed, hid, ctx.get(hid) or span_ctx.get(hid, _NO_CTX),
                                    stream_seq, attested))
    return rows


def _partial_script(sid, s, x, tid, killed, hid, run_ctx, stream_seq, attested):
    """The script_runs row of a run with only one of its records (or fields missing)."""
    base = s if s is not None else x
    context, job_id, user = run_ctx
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
    return (sid, hid, tid, base[C.R_CLUSTER], base[C.R_NODE], context, job_id, user,
            base[C.R_INDEX], path, sv.get(C.R_SHA256), sv.get(C.R_SIZE), sv.get(C.R_MODE),
            sv.get(C.R_UID), sv.get(C.R_MTIME), start, end,
            dur / 1e6 if type(dur) is int else None, exit_code, sig, tmo, refused, killed,
            output, trunc, exported or None, stream_seq, attested)

"""PURE decoding: one JetStream message (OTLP protobuf bytes) -> store rows.

No I/O here.  ``decode_message`` returns either a :class:`Decoded` (row tuples
per store table, in ``schema.TABLES`` column order) or a :class:`DeadLetter`
(reason + detail).  It never raises on bad input: anything unexpected in a
payload becomes a dead letter, so one bad message can never block the stream.

Spans are decoded by ``collector.decode_spans`` (the hot loop), GPU metrics
here; the helpers both use are in ``collector.decode_util``.  Rows are plain
tuples that the batch turns into Arrow columns once (``columns.to_arrow``).
"""

from __future__ import annotations

import json

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from collector.decode_spans import decode_traces
from collector.decode_util import (  # noqa: F401  (re-exported: callers import them from here)
    MAX_FUTURE_NS, MIN_TS_NS, NO_CHAIN, UPGRADES, _any_value, _Bad, _find_attr, _int_or_none, _parse,
    _resource_attrs, upgrade_record)
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

_SPANS_PREFIX = f"{C.SUBJECT_PREFIX}.{C.SIGNAL_SPANS}."
_METRICS_PREFIX = f"{C.SUBJECT_PREFIX}.{C.SIGNAL_METRICS}."
_HEADS_PREFIX = f"{C.SUBJECT_PREFIX}.{C.SIGNAL_HEADS}."


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
            return _own(decode_traces(payload, stream_seq, received_ns, _loads, _JSON_ERRORS), subject)
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

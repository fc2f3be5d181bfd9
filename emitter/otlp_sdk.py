"""OTLP trace protobuf <-> opentelemetry-sdk ReadableSpans.

The agent hands journal files to the SDK's SpanExporter interface as
ReadableSpans; these two functions convert both ways so that
encode_sdk_spans(sdk_spans(trace_request(x))) == trace_request(x) (tested).
opentelemetry.sdk is imported here only, lazily: direct mode never needs it.
The value helpers are shared with :mod:`emitter.otlp`, which re-exports
:func:`sdk_spans` and :func:`encode_sdk_spans`.
"""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from emitter.otlp_values import _attrs, _event, attributes_dict


def sdk_spans(req: ExportTraceServiceRequest) -> list:
    """ReadableSpans (opentelemetry-sdk) equivalent to ``req``."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope as SdkScope
    from opentelemetry.trace import SpanContext, SpanKind, Status as SdkStatus, StatusCode, TraceFlags

    out = []
    for rs in req.resource_spans:
        resource = Resource(attributes_dict(rs.resource.attributes))
        for ss in rs.scope_spans:
            scope = SdkScope(ss.scope.name, ss.scope.version or None)
            for sp in ss.spans:
                tid = int.from_bytes(sp.trace_id, "big")
                ctx = SpanContext(tid, int.from_bytes(sp.span_id, "big"), False, TraceFlags(1))
                parent = (SpanContext(tid, int.from_bytes(sp.parent_span_id, "big"), False, TraceFlags(1))
                          if sp.parent_span_id else None)
                events = [Event(ev.name, attributes_dict(ev.attributes), ev.time_unix_nano)
                          for ev in sp.events]
                status = SdkStatus(StatusCode(sp.status.code), sp.status.message or None) \
                    if sp.status.code == Status.STATUS_CODE_ERROR else SdkStatus(StatusCode(sp.status.code))
                out.append(ReadableSpan(
                    sp.name, context=ctx, parent=parent, resource=resource,
                    attributes=attributes_dict(sp.attributes), events=events,
                    kind=SpanKind(sp.kind - 1 if sp.kind else 0), status=status,
                    start_time=sp.start_time_unix_nano, end_time=sp.end_time_unix_nano,
                    instrumentation_scope=scope))
    return out


def encode_sdk_spans(spans) -> ExportTraceServiceRequest:
    """ReadableSpans -> one request, grouped by resource then scope (OTLP's shape)."""
    req = ExportTraceServiceRequest()
    by_res: dict = {}
    for span in spans:
        res_key = tuple(sorted((k, str(v)) for k, v in span.resource.attributes.items()))
        if res_key not in by_res:
            rs = req.resource_spans.add()
            _attrs(rs.resource.attributes, dict(span.resource.attributes))
            by_res[res_key] = (rs, {})
        rs, scopes = by_res[res_key]
        sc = span.instrumentation_scope
        sc_key = (sc.name, sc.version) if sc else ("", None)
        if sc_key not in scopes:
            ss = rs.scope_spans.add()
            ss.scope.name = sc_key[0]
            if sc_key[1]:
                ss.scope.version = sc_key[1]
            scopes[sc_key] = ss
        p = scopes[sc_key].spans.add()
        ctx = span.get_span_context()
        p.trace_id = ctx.trace_id.to_bytes(16, "big")
        p.span_id = ctx.span_id.to_bytes(8, "big")
        if span.parent is not None:
            p.parent_span_id = span.parent.span_id.to_bytes(8, "big")
        p.name = span.name
        p.kind = span.kind.value + 1  # SDK INTERNAL=0 -> OTLP SPAN_KIND_INTERNAL=1
        p.start_time_unix_nano = span.start_time or 0
        p.end_time_unix_nano = span.end_time or 0
        _attrs(p.attributes, {k: (list(v) if isinstance(v, tuple) else v)
                              for k, v in (span.attributes or {}).items()})
        for ev in span.events:
            _event(p, ev.name, ev.timestamp, {k: (list(v) if isinstance(v, tuple) else v)
                                              for k, v in (ev.attributes or {}).items()})
        if span.status.status_code.value:
            p.status.code = span.status.status_code.value
            if span.status.description:
                p.status.message = span.status.description
    return req

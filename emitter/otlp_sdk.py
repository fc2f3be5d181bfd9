"""OTLP trace protobuf -> opentelemetry-sdk ReadableSpans.

The agent publishes the requests it builds as they are
(:class:`emitter.exporter.TraceExporter`); SDK users export ReadableSpans
through :class:`emitter.exporter.NatsSpanExporter`, which encodes them with
the SDK's own encoder.  :func:`sdk_spans` gives the ReadableSpans equivalent
to a request, so tests can put the same hook through both paths.
opentelemetry.sdk is imported here only, lazily: direct mode never needs it.
Re-exported by :mod:`emitter.otlp`.
"""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from emitter.otlp_values import attributes_dict


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

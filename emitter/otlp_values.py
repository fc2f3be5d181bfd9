"""OTLP values shared by the encoders: attributes to and from KeyValues, the
resource, span events.  emitter.otlp, otlp_metrics, otlp_sdk and otlp_split
all import these from here (and otlp re-exports them), so none of them
imports another back at call time.
"""

from __future__ import annotations

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from emitter import __version__
from emitter import contract as c

SCOPE_NAME = "hookscope.emitter"


# ---------------------------------------------------------------- values
def _any(v) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        if -(2**63) <= v < 2**63:
            return AnyValue(int_value=v)
        return AnyValue(string_value=str(v))
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, (list, tuple)):
        av = AnyValue()
        av.array_value.values.extend(_any(x) for x in v)
        return av
    return AnyValue(string_value="" if v is None else str(v))


def _attrs(target, items: dict) -> None:
    """Append ``items`` as KeyValues, skipping None (OTel has no null).
    Scalars are set in place (``add()``): building a KeyValue and copying it
    in costs twice as much, and this is the encoder's hottest loop."""
    for k, v in items.items():
        if v is None:
            continue
        kv = target.add()
        kv.key = k
        t = type(v)
        if t is str:
            kv.value.string_value = v
        elif t is bool:
            kv.value.bool_value = v
        elif t is int and -(2**63) <= v < 2**63:
            kv.value.int_value = v
        elif t is float:
            kv.value.double_value = v
        else:
            kv.value.CopyFrom(_any(v))


def attributes_dict(kvs) -> dict:
    """KeyValue list -> plain dict (for tests, the collector and viewers)."""
    return {kv.key: _from_any(kv.value) for kv in kvs}


def _from_any(av: AnyValue):
    which = av.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_from_any(x) for x in av.array_value.values]
    if which == "kvlist_value":
        return attributes_dict(av.kvlist_value.values)
    return getattr(av, which)


def _resource(req_resource, node, cluster) -> None:
    _attrs(req_resource.attributes, {
        c.A_SERVICE_NAME: c.SERVICE_NAME,
        c.A_SERVICE_VERSION: __version__,
        c.A_HOST_NAME: node,
        c.A_CLUSTER: cluster,
        c.A_SCHEMA_VERSION: c.SCHEMA_VERSION,
    })


def _event(span: Span, name: str, ts: int, attrs: dict) -> None:
    ev = span.events.add()
    ev.name = name
    ev.time_unix_nano = max(int(ts or 0), 0)
    _attrs(ev.attributes, attrs)

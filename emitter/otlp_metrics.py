"""GPU samples <-> OTLP metrics protobuf.  Pure: no I/O, no clock, no globals.

One sampling round of GPU sample dicts becomes one ``ExportMetricsServiceRequest``
of gauges (see :func:`metrics_request`).  The value and resource helpers are
shared with the trace encoder in :mod:`emitter.otlp`, which re-exports every
public name of this module.
"""

from __future__ import annotations

from typing import Sequence

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import Gauge, Metric, NumberDataPoint

from emitter import __version__
from emitter import contract as c

#: Units of the GPU gauges (UCUM, as OTel semconv uses them).
GPU_UNITS = {
    c.M_GPU_UTILIZATION: "1",
    c.M_GPU_MEMORY_USAGE: "By",
    c.M_GPU_MEMORY_LIMIT: "By",
    c.M_GPU_POWER: "W",
    c.M_GPU_TEMPERATURE: "Cel",
    c.M_GPU_CLOCK_SM: "MHz",
    c.M_GPU_ECC_SBE: "{error}",
    c.M_GPU_ECC_DBE: "{error}",
    c.M_GPU_XID: "1",
    c.M_GPU_RETIRED_PAGES: "{page}",
    c.M_GPU_THROTTLE: "1",
}


def metrics_request(samples: Sequence[dict], *, node: str, cluster: str,
                    ts: int) -> ExportMetricsServiceRequest:
    """One sampling round: a gauge per metric name, a data point per GPU.

    A sample dict: ``index, uuid, model, vendor, source, job_id (or None),
    ts (ns, optional: defaults to ts), metrics: {contract.M_GPU_*: number}``.
    """
    # emitter.otlp re-exports this module's names, so its helpers are imported
    # at call time: either module can then be imported first.
    from emitter.otlp import SCOPE_NAME, _attrs, _resource

    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    _resource(rm.resource, node, cluster)
    sm = rm.scope_metrics.add()
    sm.scope.CopyFrom(InstrumentationScope(name=SCOPE_NAME, version=__version__))
    by_name: dict[str, Metric] = {}
    for name in c.GPU_METRICS:
        if any(name in (s.get("metrics") or {}) for s in samples):
            m = sm.metrics.add()
            m.name = name
            m.unit = GPU_UNITS.get(name, "1")
            m.gauge.CopyFrom(Gauge())
            by_name[name] = m
    for s in samples:
        pattrs = {
            c.A_GPU_INDEX: s.get("index"),
            c.A_GPU_ID: s.get("uuid"),
            c.A_GPU_MODEL: s.get("model"),
            c.A_GPU_VENDOR: s.get("vendor"),
            c.A_GPU_SOURCE: s.get("source"),
            c.A_JOB_ID: s.get("job_id"),
        }
        for name, value in (s.get("metrics") or {}).items():
            if value is None or name not in by_name:
                continue
            dp: NumberDataPoint = by_name[name].gauge.data_points.add()
            dp.time_unix_nano = int(s.get("ts") or ts)
            if isinstance(value, bool) or isinstance(value, int):
                dp.as_int = int(value)
            else:
                dp.as_double = float(value)
            _attrs(dp.attributes, pattrs)
    return req


def encode_metrics(samples: Sequence[dict], **kw) -> bytes:
    return metrics_request(samples, **kw).SerializeToString()


def decode_metrics(data: bytes) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    req.ParseFromString(data)
    return req


def samples_from_metrics(req: ExportMetricsServiceRequest) -> list[dict]:
    """Flatten gauges back to rows: one dict per data point (for tests and loaders)."""
    from emitter.otlp import attributes_dict

    rows = []
    for rm in req.resource_metrics:
        res = attributes_dict(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for dp in m.gauge.data_points:
                    row = attributes_dict(dp.attributes)
                    row["metric"] = m.name
                    row["unit"] = m.unit
                    row["value"] = dp.as_int if dp.WhichOneof("value") == "as_int" else dp.as_double
                    row["ts"] = dp.time_unix_nano
                    row[c.A_HOST_NAME] = res.get(c.A_HOST_NAME)
                    row[c.A_CLUSTER] = res.get(c.A_CLUSTER)
                    rows.append(row)
    return rows

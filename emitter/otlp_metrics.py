"""GPU samples <-> OTLP metrics protobuf.  Pure: no I/O, no clock, no globals.

One sampling round of GPU sample dicts becomes one ``ExportMetricsServiceRequest``
(see :func:`metrics_request`).  Names, instrument kinds and units follow the
OpenTelemetry hardware semantic conventions (``contract.GPU_OTLP``,
``schema_url`` = ``contract.SEMCONV_SCHEMA_URL``):

* ``hw.gpu.utilization`` Gauge, ``hw.gpu.memory.usage``/``.limit``
  UpDownCounters (cumulative non-monotonic Sums), ``hw.power`` and
  ``hw.temperature`` Gauges, ``hw.errors`` a Counter (cumulative monotonic Sum)
  with ``error.type`` corrected/uncorrected; every data point carries
  ``hw.type=gpu`` and ``hw.id`` (the UUID, when the backend knows it);
* hookscope's own facts under ``hookscope.gpu.*`` (SM clock, XID, retired
  pages, throttle reasons, the GPU index).

The value and resource helpers are shared with the trace encoder in
:mod:`emitter.otlp`, which re-exports every public name of this module.
"""

from __future__ import annotations

from typing import Sequence

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric, NumberDataPoint

from emitter import __version__
from emitter import contract as c
from emitter.otlp_values import SCOPE_NAME, _attrs, _resource, attributes_dict

#: Units of the GPU metrics by sample key (UCUM, as OTel semconv uses them).
GPU_UNITS = {key: spec[2] for key, spec in c.GPU_OTLP.items()}

_CUMULATIVE = AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE
#: OTLP metric name -> sample key, for the names that map one to one.
_KEY_OF_NAME = {spec[0]: key for key, spec in c.GPU_OTLP.items() if spec[0] != c.M_HW_ERRORS}
_KEY_OF_ERROR = {spec[3][c.A_ERROR_TYPE]: key for key, spec in c.GPU_OTLP.items()
                 if spec[0] == c.M_HW_ERRORS}


def _new_metric(sm, name: str, kind: str, unit: str) -> Metric:
    m = sm.metrics.add()
    m.name = name
    m.unit = unit
    if kind == "gauge":
        m.gauge.SetInParent()
    else:
        m.sum.SetInParent()
        m.sum.aggregation_temporality = _CUMULATIVE
        m.sum.is_monotonic = kind == "counter"
    return m


def _points(m: Metric):
    return m.gauge.data_points if m.WhichOneof("data") == "gauge" else m.sum.data_points


def _point_attrs(s: dict) -> dict:
    return {
        c.A_HW_TYPE: c.HW_TYPE_GPU,
        c.A_GPU_ID: s.get("uuid"),
        c.A_GPU_INDEX: s.get("index"),
        c.A_GPU_MODEL: s.get("model"),
        c.A_GPU_VENDOR: s.get("vendor"),
        c.A_GPU_SOURCE: s.get("source"),
        c.A_GPU_MIG: s.get("mig"),
        c.A_JOB_ID: s.get("job_id"),
    }


def metrics_request(samples: Sequence[dict], *, node: str, cluster: str,
                    ts: int) -> ExportMetricsServiceRequest:
    """One sampling round: a metric per OTLP name, a data point per GPU (and
    per error.type for ``hw.errors``).

    A sample dict: ``index, uuid, model, vendor, source, mig (optional),
    job_id (or None), ts (ns, optional: defaults to ts), metrics:
    {contract.M_GPU_*: number}``.
    """
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.schema_url = c.SEMCONV_SCHEMA_URL
    _resource(rm.resource, node, cluster)
    sm = rm.scope_metrics.add()
    sm.schema_url = c.SEMCONV_SCHEMA_URL
    sm.scope.CopyFrom(InstrumentationScope(name=SCOPE_NAME, version=__version__))
    by_name: dict[str, Metric] = {}
    for key in c.GPU_METRICS:
        name, kind, unit, _ = c.GPU_OTLP[key]
        if name not in by_name and any(key in (s.get("metrics") or {}) for s in samples):
            by_name[name] = _new_metric(sm, name, kind, unit)
    for s in samples:
        pattrs = _point_attrs(s)
        metrics = s.get("metrics") or {}
        for key in c.GPU_METRICS:
            value = metrics.get(key)
            if value is None:
                continue
            name, _, _, extra = c.GPU_OTLP[key]
            dp: NumberDataPoint = _points(by_name[name]).add()
            dp.time_unix_nano = int(s.get("ts") or ts)
            if isinstance(value, bool) or isinstance(value, int):
                dp.as_int = int(value)
            else:
                dp.as_double = float(value)
            _attrs(dp.attributes, {**pattrs, **extra} if extra else pattrs)
    return req


def encode_metrics(samples: Sequence[dict], **kw) -> bytes:
    return metrics_request(samples, **kw).SerializeToString()


def decode_metrics(data: bytes) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    req.ParseFromString(data)
    return req


def sample_key(name: str, attrs: dict) -> str | None:
    """The sample key (``contract.M_GPU_*``) of one data point: by its OTLP
    name (semconv or legacy) and, for ``hw.errors``, its ``error.type``.
    None: not a GPU metric of ours (e.g. ``hw.errors`` of a disk)."""
    if attrs.get(c.A_HW_TYPE, c.HW_TYPE_GPU) != c.HW_TYPE_GPU:
        return None
    if name == c.M_HW_ERRORS:
        return _KEY_OF_ERROR.get(attrs.get(c.A_ERROR_TYPE))
    return _KEY_OF_NAME.get(name) or c.LEGACY_GPU_METRICS.get(name)


def samples_from_metrics(req: ExportMetricsServiceRequest) -> list[dict]:
    """Flatten the metrics back to rows: one dict per data point (for tests
    and loaders).  ``metric`` is the sample key (``contract.M_GPU_*``; the
    OTLP name when it is not one of ours), ``name`` the OTLP name."""
    rows = []
    for rm in req.resource_metrics:
        res = attributes_dict(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                for dp in _points(m):
                    row = attributes_dict(dp.attributes)
                    row["metric"] = sample_key(m.name, row) or m.name
                    row["name"] = m.name
                    row["unit"] = m.unit
                    row["value"] = dp.as_int if dp.WhichOneof("value") == "as_int" else dp.as_double
                    row["ts"] = dp.time_unix_nano
                    if c.A_GPU_INDEX not in row and c.LEGACY_A_GPU_INDEX in row:
                        row[c.A_GPU_INDEX] = row[c.LEGACY_A_GPU_INDEX]
                    row[c.A_HOST_NAME] = res.get(c.A_HOST_NAME)
                    row[c.A_CLUSTER] = res.get(c.A_CLUSTER)
                    rows.append(row)
    return rows

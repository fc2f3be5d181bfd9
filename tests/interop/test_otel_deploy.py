"""deploy/otel/otelcol-nats.yaml subscribes to the subjects the agent publishes on."""

from pathlib import Path

import yaml

from emitter import contract as c
from emitter import otlp

CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "otel" / "otelcol-nats.yaml"


def _matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more trailing tokens."""
    p, s = pattern.split("."), subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(p) == len(s)


def test_receiver_subjects_are_the_agent_s_and_payloads_are_otlp_proto():
    cfg = yaml.safe_load(CONFIG.read_text())
    nats = cfg["receivers"]["nats"]
    assert {nats["traces"]["subject"], nats["metrics"]["subject"]} == set(c.STREAM_SUBJECTS)
    assert nats["traces"]["encoding"] == nats["metrics"]["encoding"] == "otlp_proto"
    for signal, key in ((c.SIGNAL_SPANS, "traces"), (c.SIGNAL_METRICS, "metrics")):
        for cluster, node in (("gpu-east", "node001"), ("001", "a.b")):
            assert _matches(nats[key]["subject"], c.subject(signal, cluster, node))
        other = "metrics" if key == "traces" else "traces"
        assert not _matches(nats[other]["subject"], c.subject(signal, "x", "y"))
    for name, p in cfg["service"]["pipelines"].items():
        assert p["receivers"] == ["nats"] and name in ("traces", "metrics")


def test_metrics_payload_is_plain_otlp_with_the_semconv_schema():
    """What the receiver hands the pipeline: an ExportMetricsServiceRequest."""
    data = otlp.encode_metrics([{"index": 0, "uuid": "GPU-1", "model": "m", "vendor": "nvidia",
                                 "source": "replay", "metrics": {c.M_GPU_POWER: 300.0}}],
                               node="n", cluster="c", ts=1)
    req = otlp.decode_metrics(data)
    assert req.resource_metrics[0].schema_url == c.SEMCONV_SCHEMA_URL
    assert [m.name for m in req.resource_metrics[0].scope_metrics[0].metrics] == ["hw.power"]

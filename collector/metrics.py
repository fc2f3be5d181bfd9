"""Prometheus ``/metrics`` for the collector, written and served by prometheus_client.

Exposed: messages, spans and GPU samples ingested; dead letters by reason;
consumer lag (messages pending in the durable consumer, from the last
fetched message's metadata: no extra API call); batch commit latency
(histogram); store size; node clock skew (received minus hook end) with a
count of hooks beyond ``SKEW_WARN_MS``; prometheus_client's standard
``process_*`` metrics, among them ``process_resident_memory_bytes`` (the
soak's bound, watchable in production).  The counts live in :class:`Metrics`
(the consumer updates them under one lock); a custom collector turns them
into metric families at scrape time.
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from collector.errors import CollectorError

#: |skew| beyond this is flagged (counter hookscope_collector_skewed_hooks_total).
SKEW_WARN_MS = 5 * 60 * 1000
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.counters = {"messages": 0, "spans": 0, "gpu_samples": 0, "batches": 0,
                         "nats_errors": 0, "store_errors": 0, "deadletter_publish_errors": 0,
                         "skewed_hooks": 0, "journal_errors": 0}
        self.dead = {}
        self.lag = 0
        self.last_seq = 0
        self.max_abs_skew_ms = 0.0
        self.hist = [0] * (len(_BUCKETS) + 1)
        self.hist_sum = 0.0
        self.hist_count = 0
        self.store_size_fn = None
        self.stage_seconds = {}
        self.started = time.time()
        self._registry = None

    def add_time(self, stage: str, seconds: float):
        """Cumulative seconds per pipeline stage (decode, archive, commit, snapshot...)."""
        with self._lock:
            self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def inc(self, name, n=1):
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + n

    def batch_done(self, batch, commit_s: float):
        with self._lock:
            c = self.counters
            c["messages"] += batch.n_messages
            c["spans"] += batch.n_spans
            c["gpu_samples"] += batch.n_gpu
            c["batches"] += 1
            c["journal_errors"] += getattr(batch, "n_journal_errors", 0)
            for reason, _, _ in batch.dead:
                self.dead[reason] = self.dead.get(reason, 0) + 1
            self.lag = getattr(batch, "pending", 0)
            self.last_seq = max(self.last_seq, batch.last_seq)
            for s in batch.skews_ms:
                a = abs(s)
                if a > SKEW_WARN_MS:
                    c["skewed_hooks"] += 1
                if a > self.max_abs_skew_ms:
                    self.max_abs_skew_ms = a
            for i, b in enumerate(_BUCKETS):
                if commit_s <= b:
                    self.hist[i] += 1
                    break
            else:
                self.hist[-1] += 1
            self.hist_sum += commit_s
            self.hist_count += 1

    def snapshot(self) -> dict:
        with self._lock:
            d = dict(self.counters)
            d["dead_letters"] = dict(self.dead)
            d["lag"] = self.lag
            d["last_seq"] = self.last_seq
            d["stage_seconds"] = dict(self.stage_seconds)
            return d

    def render(self) -> str:
        """The text exposition format, as prometheus_client writes it."""
        return generate_latest(self.registry).decode()

    @property
    def registry(self) -> CollectorRegistry:
        """One registry per instance (tests build many), with the process
        collector's standard ``process_*`` metrics next to ours."""
        if self._registry is None:
            reg = CollectorRegistry(auto_describe=False)
            reg.register(_Families(self))
            ProcessCollector(registry=reg)
            self._registry = reg
        return self._registry

    def families(self):
        with self._lock:
            c = dict(self.counters)
            dead = dict(self.dead)
            hist, hsum = list(self.hist), self.hist_sum
            lag, last_seq, skew = self.lag, self.last_seq, self.max_abs_skew_ms
            stages = dict(self.stage_seconds)
        p = "hookscope_collector_"

        def counter(name, help_, value=None, labels=(), samples=()):
            f = CounterMetricFamily(p + name, help_, value=value, labels=labels or None)
            for lv, v in samples:
                f.add_metric(lv, v)
            return f

        yield counter("messages_total", "JetStream messages committed and acked.", c["messages"])
        yield counter("spans_total", "Spans ingested.", c["spans"])
        yield counter("gpu_samples_total", "GPU sample rows ingested.", c["gpu_samples"])
        yield counter("batches_total", "Batches committed.", c["batches"])
        yield counter("journal_errors_total", "journal_error records received: a node's journal file was "
                      "damaged, untrusted, or stayed behind (too large to ship).", c["journal_errors"])
        # reason="none" keeps the series present (and alertable) before the first dead letter
        yield counter("dead_letters_total", "Messages dead-lettered, by reason.", labels=["reason"],
                      samples=[([r], n) for r, n in sorted(dead.items())] or [(["none"], 0)])
        yield counter("errors_total", "Errors by kind (the batch is retried).", labels=["kind"],
                      samples=[([k], c.get(k, 0)) for k in ("nats_errors", "store_errors",
                                                             "deadletter_publish_errors", "compact_errors")])
        yield counter("compactions_total", "Archive partitions compacted by the collector.",
                      c.get("compacted_partitions", 0))
        yield GaugeMetricFamily(p + "consumer_lag_messages", "Messages pending in the durable consumer.", lag)
        yield GaugeMetricFamily(p + "last_stream_seq", "Highest stream sequence committed.", last_seq)
        cum, buckets = 0, []
        for b, n in zip((*_BUCKETS, float("inf")), hist):
            cum += n
            buckets.append(("+Inf" if b == float("inf") else str(b), cum))
        yield HistogramMetricFamily(p + "commit_seconds", "Archive write + DuckDB commit time per batch.",
                                    buckets=buckets, sum_value=hsum)
        yield counter("stage_seconds_total", "Time spent per pipeline stage.", labels=["stage"],
                      samples=[([k], v) for k, v in sorted(stages.items())] or [(["decode"], 0)])
        size = 0
        if self.store_size_fn is not None:
            try:
                size = self.store_size_fn()
            except Exception:
                size = 0
        yield GaugeMetricFamily(p + "store_bytes", "Size of the live DuckDB file (+WAL).", size)
        yield GaugeMetricFamily(p + "clock_skew_max_abs_ms",
                                "Largest |receive time - hook end| seen (node clock vs stream clock).", skew)
        yield counter("skewed_hooks_total", f"Hooks whose node clock was off by more than "
                      f"{SKEW_WARN_MS // 60000} minutes.", c["skewed_hooks"])


class _Families(Collector):
    """prometheus_client's custom-collector hook: our state, read at scrape time."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self):
        return self.metrics.families()


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise CollectorError(f"metrics address {addr!r} is not HOST:PORT (e.g. 127.0.0.1:9464)") from None


def serve_metrics(metrics: Metrics, addr: str):
    """Serve /metrics (prometheus_client's threaded WSGI server, a daemon
    thread); returns the server (``.shutdown()``, ``.server_address``)."""
    host, port = parse_addr(addr)
    try:
        srv, _ = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise CollectorError(f"cannot listen on {addr} for /metrics: {exc}") from exc
    return srv

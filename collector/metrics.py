"""Prometheus ``/metrics`` for the collector (text exposition format 0.0.4, stdlib only).

Exposed: messages, spans and GPU samples ingested; dead letters by reason;
consumer lag (messages pending in the durable consumer, from the last
fetched message's metadata: no extra API call); batch commit latency
(histogram); store size; node clock skew (received minus hook end) with a
count of hooks beyond ``SKEW_WARN_MS``; the process's resident memory (the
soak's bound, watchable in production).
"""

from __future__ import annotations

import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from collector.errors import CollectorError

#: |skew| beyond this is flagged (counter hookscope_collector_skewed_hooks_total).
SKEW_WARN_MS = 5 * 60 * 1000
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.counters = {"messages": 0, "spans": 0, "gpu_samples": 0, "batches": 0,
                         "nats_errors": 0, "store_errors": 0, "deadletter_publish_errors": 0,
                         "skewed_hooks": 0}
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
        with self._lock:
            c = dict(self.counters)
            dead = dict(self.dead)
            hist, hsum, hcount = list(self.hist), self.hist_sum, self.hist_count
            lag, last_seq, skew = self.lag, self.last_seq, self.max_abs_skew_ms
            stages = dict(self.stage_seconds)
        out = []

        def metric(name, typ, help_, samples):
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} {typ}")
            for labels, value in samples:
                out.append(f"{name}{labels} {value}")

        p = "hookscope_collector_"
        metric(p + "messages_total", "counter", "JetStream messages committed and acked.",
               [("", c["messages"])])
        metric(p + "spans_total", "counter", "Spans ingested.", [("", c["spans"])])
        metric(p + "gpu_samples_total", "counter", "GPU sample rows ingested.", [("", c["gpu_samples"])])
        metric(p + "batches_total", "counter", "Batches committed.", [("", c["batches"])])
        metric(p + "dead_letters_total", "counter", "Messages dead-lettered, by reason.",
               [(f'{{reason="{_esc(r)}"}}', n) for r, n in sorted(dead.items())] or [('{reason="none"}', 0)])
        metric(p + "errors_total", "counter", "Errors by kind (the batch is retried).",
               [(f'{{kind="{k}"}}', c[k]) for k in ("nats_errors", "store_errors",
                                                     "deadletter_publish_errors")])
        metric(p + "consumer_lag_messages", "gauge", "Messages pending in the durable consumer.",
               [("", lag)])
        metric(p + "last_stream_seq", "gauge", "Highest stream sequence committed.", [("", last_seq)])
        cum, samples = 0, []
        for b, n in zip(_BUCKETS, hist):
            cum += n
            samples.append((f'_bucket{{le="{b}"}}', cum))
        samples.append(('_bucket{le="+Inf"}', hcount))
        samples.append(("_sum", f"{hsum:.6f}"))
        samples.append(("_count", hcount))
        out.append(f"# HELP {p}commit_seconds Archive write + DuckDB commit time per batch.")
        out.append(f"# TYPE {p}commit_seconds histogram")
        for suffix, v in samples:
            out.append(f"{p}commit_seconds{suffix} {v}")
        metric(p + "stage_seconds_total", "counter", "Time spent per pipeline stage.",
               [(f'{{stage="{k}"}}', f"{v:.6f}") for k, v in sorted(stages.items())] or [('{stage="decode"}', 0)])
        size = 0
        if self.store_size_fn is not None:
            try:
                size = self.store_size_fn()
            except Exception:
                size = 0
        metric(p + "store_bytes", "gauge", "Size of the live DuckDB file (+WAL).", [("", size)])
        metric("process_resident_memory_bytes", "gauge", "Resident memory of the collector process.",
               [("", resident_bytes())])
        metric(p + "clock_skew_max_abs_ms", "gauge",
               "Largest |receive time - hook end| seen (node clock vs stream clock).", [("", skew)])
        metric(p + "skewed_hooks_total", "counter",
               f"Hooks whose node clock was off by more than {SKEW_WARN_MS // 60000} minutes.",
               [("", c["skewed_hooks"])])
        return "\n".join(out) + "\n"


def resident_bytes() -> int:
    """This process's RSS (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class _Handler(BaseHTTPRequestHandler):
    metrics: Metrics = None

    def do_GET(self):
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404, "only /metrics here")
            return
        body = self.metrics.render().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def parse_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise CollectorError(f"metrics address {addr!r} is not HOST:PORT (e.g. 127.0.0.1:9464)") from None


def serve_metrics(metrics: Metrics, addr: str) -> ThreadingHTTPServer:
    """Serve /metrics in a daemon thread; returns the server (``.shutdown()``)."""
    host, port = parse_addr(addr)
    handler = type("MetricsHandler", (_Handler,), {"metrics": metrics})
    try:
        srv = ThreadingHTTPServer((host, port), handler)
    except OSError as exc:
        raise CollectorError(f"cannot listen on {addr} for /metrics: {exc}") from exc
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, name="hookscope-metrics", daemon=True).start()
    return srv

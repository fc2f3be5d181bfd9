"""The GPU backend protocol and the timeout wrapper every backend runs behind.

NVML can hang for minutes on a failing GPU (and the driver holds a lock, so
a second call hangs too).  ``TimedBackend`` runs each call in a worker thread
and waits at most ``timeout_s``; on timeout it abandons the thread (daemon),
marks the backend unhealthy and returns nothing until that stuck call has
returned.  The agent's span export never waits on a GPU call.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from emitter import EmitterError


class GpuError(EmitterError):
    """A GPU backend could not be opened or sampled."""


@dataclass
class GpuSample:
    index: int
    uuid: str | None
    model: str | None
    vendor: str
    source: str  # nvml | amdsmi | replay
    metrics: dict = field(default_factory=dict)  # contract.M_GPU_* -> number (None: unsupported)
    ts: int = 0
    #: MIG mode (None: the GPU has no MIG), how many MIG devices it holds, and
    #: their UUIDs where the backend can see them (NVML): CUDA_VISIBLE_DEVICES
    #: may name a MIG device, which belongs to this GPU.
    mig: bool | None = None
    mig_devices: int = 0
    mig_uuids: tuple = ()

    def as_dict(self, job_id=None) -> dict:
        """The shape emitter.otlp.metrics_request takes."""
        return {"index": self.index, "uuid": self.uuid, "model": self.model, "vendor": self.vendor,
                "source": self.source, "job_id": job_id, "ts": self.ts, "mig": self.mig,
                "metrics": {k: v for k, v in self.metrics.items() if v is not None}}

    def copy(self) -> "GpuSample":
        return GpuSample(self.index, self.uuid, self.model, self.vendor, self.source, dict(self.metrics),
                         self.ts, self.mig, self.mig_devices, tuple(self.mig_uuids))


class GpuBackend:
    """What every backend implements.  Calls may block: callers go through
    TimedBackend.  ``sample()`` returns one GpuSample per GPU on the node."""

    name = "base"

    def open(self) -> None:
        pass

    def sample(self) -> list[GpuSample]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TimedBackend:
    """Runs a backend's calls with a deadline; never blocks longer than it."""

    def __init__(self, backend: GpuBackend, timeout_s: float = 2.0, log=None):
        self.backend = backend
        self.timeout_s = timeout_s
        self._stuck: threading.Thread | None = None
        self._log = log or (lambda msg: None)
        self.healthy = True
        self.timeouts = 0
        self.errors = 0
        self.last_error: str | None = None

    @property
    def name(self) -> str:
        return self.backend.name

    def _run(self, fn, what: str):
        if self._stuck is not None:
            if self._stuck.is_alive():
                return None  # the previous call still hangs: do not pile up threads
            self._stuck = None
            self.healthy = True
            self._log(f"GPU backend {self.name} answered again after a hung {what}")
        box = {}

        def target():
            try:
                box["value"] = fn()
            except BaseException as exc:  # noqa: BLE001 - reported, never raised into the agent
                box["error"] = exc

        t = threading.Thread(target=target, name=f"gpu-{self.name}-{what}", daemon=True)
        t.start()
        t.join(self.timeout_s)
        if t.is_alive():
            self._stuck = t
            self.healthy = False
            self.timeouts += 1
            self.last_error = f"{what} did not return within {self.timeout_s}s"
            self._log(f"GPU backend {self.name}: {self.last_error}; marked unhealthy, "
                      "spans keep flowing; GPU samples resume when it answers")
            return None
        if "error" in box:
            self.errors += 1
            self.last_error = f"{what}: {type(box['error']).__name__}: {box['error']}"
            self._log(f"GPU backend {self.name}: {self.last_error}")
            return None
        return box.get("value")

    def open(self) -> bool:
        r = self._run(lambda: (self.backend.open(), True)[1], "open")
        return bool(r)

    def sample(self) -> list[GpuSample]:
        """Samples (ts stamped now), or [] when the backend failed or hangs."""
        out = self._run(self.backend.sample, "sample")
        if not out:
            return []
        now = time.time_ns()
        for s in out:
            s.ts = s.ts or now
        return out

    def close(self) -> None:
        self._run(self.backend.close, "close")

"""NVIDIA GPUs through NVML (``nvidia-ml-py``, imported as ``pynvml``).

UNVERIFIED ON HARDWARE: this machine has no GPU.  The calls follow the NVML
API reference and nvidia-ml-py's bindings; run ``tests/gpu/check_hardware.py``
on a GPU node to compare every value with ``nvidia-smi -q -x``.

Every call below may hang on a failing GPU: the agent only calls ``sample``
through ``base.TimedBackend``.  A call a GPU does not support (e.g. retired
pages on Hopper, which uses row remapping) yields None for that metric.
"""

from __future__ import annotations

from emitter import contract as c
from emitter.gpu.base import GpuBackend, GpuError, GpuSample


def available() -> bool:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return False
    return True


class NvmlBackend(GpuBackend):
    name = "nvml"

    def __init__(self):
        self.nv = None
        self._handles = []
        self._events = None
        self._last_xid: dict[int, int] = {}

    def open(self) -> None:
        import pynvml as nv

        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise GpuError(f"NVML init failed ({exc}): is the NVIDIA driver loaded?") from None
        self.nv = nv
        n = nv.nvmlDeviceGetCount()
        self._handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(n)]
        # XIDs arrive as NVML events; register once, poll without waiting each round.
        try:
            self._events = nv.nvmlEventSetCreate()
            for h in self._handles:
                try:
                    nv.nvmlDeviceRegisterEvents(h, nv.nvmlEventTypeXidCriticalError, self._events)
                except nv.NVMLError:
                    pass  # not supported on this GPU (e.g. GeForce)
        except nv.NVMLError:
            self._events = None

    def _try(self, fn, *args):
        try:
            return fn(*args)
        except self.nv.NVMLError:
            return None

    def _drain_xids(self) -> None:
        nv = self.nv
        if self._events is None:
            return
        uuid_to_index = {}
        for i, h in enumerate(self._handles):
            u = self._try(nv.nvmlDeviceGetUUID, h)
            uuid_to_index[u] = i
        for _ in range(64):  # bounded: never loop on a storm
            try:
                data = nv.nvmlEventSetWait_v2(self._events, 0)
            except nv.NVMLError:  # NVML_ERROR_TIMEOUT: no more events
                return
            idx = uuid_to_index.get(self._try(nv.nvmlDeviceGetUUID, data.device))
            if idx is not None:
                self._last_xid[idx] = int(data.eventData)

    def sample(self) -> list[GpuSample]:
        nv = self.nv
        if nv is None:
            raise GpuError("NVML backend not opened")
        self._drain_xids()
        out = []
        for i, h in enumerate(self._handles):
            util = self._try(nv.nvmlDeviceGetUtilizationRates, h)
            mem = self._try(nv.nvmlDeviceGetMemoryInfo, h)
            power_mw = self._try(nv.nvmlDeviceGetPowerUsage, h)
            sbe = self._try(nv.nvmlDeviceGetTotalEccErrors, h, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                            nv.NVML_VOLATILE_ECC)
            dbe = self._try(nv.nvmlDeviceGetTotalEccErrors, h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                            nv.NVML_VOLATILE_ECC)
            retired = None
            rows = self._try(nv.nvmlDeviceGetRemappedRows, h)  # Ampere+: (corr, unc, pending, failed)
            if rows is not None:
                retired = int(rows[0]) + int(rows[1])
            else:
                pages = [self._try(nv.nvmlDeviceGetRetiredPages, h, cause) for cause in (
                    nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
                    nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)]
                if any(p is not None for p in pages):
                    retired = sum(len(p or ()) for p in pages)
            reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
                nv.nvmlDeviceGetCurrentClocksThrottleReasons
            name = self._try(nv.nvmlDeviceGetName, h)
            uuid = self._try(nv.nvmlDeviceGetUUID, h)
            out.append(GpuSample(
                index=i,
                uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
                model=name.decode() if isinstance(name, bytes) else name,
                vendor="nvidia", source="nvml",
                metrics={
                    c.M_GPU_UTILIZATION: None if util is None else util.gpu / 100.0,
                    c.M_GPU_MEMORY_USAGE: None if mem is None else int(mem.used),
                    c.M_GPU_MEMORY_LIMIT: None if mem is None else int(mem.total),
                    c.M_GPU_POWER: None if power_mw is None else power_mw / 1000.0,
                    c.M_GPU_TEMPERATURE: self._try(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
                    c.M_GPU_CLOCK_SM: self._try(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
                    c.M_GPU_ECC_SBE: sbe,
                    c.M_GPU_ECC_DBE: dbe,
                    c.M_GPU_XID: self._last_xid.get(i, 0),
                    c.M_GPU_RETIRED_PAGES: retired,
                    c.M_GPU_THROTTLE: self._try(reasons_fn, h),
                }))
        return out

    def close(self) -> None:
        if self.nv is not None:
            try:
                if self._events is not None:
                    self.nv.nvmlEventSetFree(self._events)
                self.nv.nvmlShutdown()
            except self.nv.NVMLError:
                pass
            self.nv = None

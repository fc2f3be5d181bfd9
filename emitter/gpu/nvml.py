"""NVIDIA GPUs through NVML (``nvidia-ml-py``, imported as ``pynvml``).

UNVERIFIED ON HARDWARE: this machine has no GPU.  The calls follow the NVML
API reference and nvidia-ml-py's bindings; run ``tests/gpu/check_hardware.py``
on a GPU node to compare every value with ``nvidia-smi -q -x``.

Current calls first, older ones as the fallback a driver without the new
symbol needs: ``nvmlDeviceGetTemperatureV`` (``nvmlDeviceGetTemperature`` is
deprecated), ``nvmlDeviceGetMemoryInfo_v2`` (v1 counts reserved memory as
used), ``nvmlDeviceGetCurrentClocksEventReasons`` (was ...ThrottleReasons).
Indices are minor numbers (see :meth:`NvmlBackend.index_of`).

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

    def _first(self, *calls):
        """The first call that answers: the current NVML function, then the
        one an old driver has (pynvml raises NVMLError FUNCTION_NOT_FOUND
        when the driver's libnvidia-ml lacks a symbol)."""
        for fn, *args in calls:
            v = self._try(fn, *args)
            if v is not None:
                return v
        return None

    def _memory(self, h):
        """(used, total) bytes.  v2 (driver 510+) reports ``used`` without the
        driver's reserved memory, as nvidia-smi's fb_memory_usage does."""
        nv = self.nv
        v2 = getattr(nv, "nvmlMemory_v2", None)
        mem = self._first(*([(nv.nvmlDeviceGetMemoryInfo, h, v2)] if v2 else []),
                          (nv.nvmlDeviceGetMemoryInfo, h))
        return (None, None) if mem is None else (int(mem.used), int(mem.total))

    def _temperature(self, h):
        nv = self.nv
        calls = [(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)]
        if hasattr(nv, "nvmlDeviceGetTemperatureV"):  # nvmlDeviceGetTemperature is deprecated
            calls.insert(0, (nv.nvmlDeviceGetTemperatureV, h, nv.NVML_TEMPERATURE_GPU))
        return self._first(*calls)

    def _retired(self, h):
        nv = self.nv
        rows = self._try(nv.nvmlDeviceGetRemappedRows, h)  # Ampere+: (corr, unc, pending, failed)
        if rows is not None:
            return int(rows[0]) + int(rows[1])
        pages = [self._try(nv.nvmlDeviceGetRetiredPages, h, cause) for cause in (
            nv.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
            nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)]
        if any(p is not None for p in pages):
            return sum(len(p or ()) for p in pages)
        return None

    def _mig(self, h):
        """(mig mode or None, MIG device UUIDs)."""
        nv = self.nv
        mode = self._try(nv.nvmlDeviceGetMigMode, h)  # (current, pending); NOT_SUPPORTED pre-Ampere
        if mode is None:
            return None, ()
        enabled = int(mode[0]) == int(getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1))
        uuids = []
        if enabled:
            for i in range(self._try(nv.nvmlDeviceGetMaxMigDeviceCount, h) or 0):
                mh = self._try(nv.nvmlDeviceGetMigDeviceHandleByIndex, h, i)
                u = None if mh is None else self._try(nv.nvmlDeviceGetUUID, mh)
                if u:
                    uuids.append(u.decode() if isinstance(u, bytes) else u)
        return enabled, tuple(uuids)

    def index_of(self, position: int, h) -> int:
        """The device's minor number (N of /dev/nvidiaN: what Slurm puts in
        CUDA_VISIBLE_DEVICES/SLURM_JOB_GPUS for Prolog/Epilog), else its NVML
        enumeration position (nvidia-smi's minor_number is the same number)."""
        minor = self._try(self.nv.nvmlDeviceGetMinorNumber, h)
        return int(minor) if minor is not None else position

    def _one(self, i, h) -> GpuSample:
        nv = self.nv
        util = self._try(nv.nvmlDeviceGetUtilizationRates, h)
        used, total = self._memory(h)
        power_mw = self._try(nv.nvmlDeviceGetPowerUsage, h)
        sbe = self._try(nv.nvmlDeviceGetTotalEccErrors, h, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                        nv.NVML_VOLATILE_ECC)
        dbe = self._try(nv.nvmlDeviceGetTotalEccErrors, h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                        nv.NVML_VOLATILE_ECC)
        reasons = [(getattr(nv, n), h) for n in ("nvmlDeviceGetCurrentClocksEventReasons",
                                                 "nvmlDeviceGetCurrentClocksThrottleReasons") if hasattr(nv, n)]
        name = self._try(nv.nvmlDeviceGetName, h)
        uuid = self._try(nv.nvmlDeviceGetUUID, h)
        mig, mig_uuids = self._mig(h)
        return GpuSample(
            index=self.index_of(i, h),
            uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
            model=name.decode() if isinstance(name, bytes) else name,
            vendor="nvidia", source="nvml", mig=mig, mig_devices=len(mig_uuids), mig_uuids=mig_uuids,
            metrics={
                c.M_GPU_UTILIZATION: None if util is None else util.gpu / 100.0,
                c.M_GPU_MEMORY_USAGE: used,
                c.M_GPU_MEMORY_LIMIT: total,
                c.M_GPU_POWER: None if power_mw is None else power_mw / 1000.0,
                c.M_GPU_TEMPERATURE: self._temperature(h),
                c.M_GPU_CLOCK_SM: self._try(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
                c.M_GPU_ECC_SBE: sbe,
                c.M_GPU_ECC_DBE: dbe,
                c.M_GPU_XID: self._last_xid.get(i, 0),
                c.M_GPU_RETIRED_PAGES: self._retired(h),
                c.M_GPU_THROTTLE: self._first(*reasons),
            })

    def sample(self) -> list[GpuSample]:
        if self.nv is None:
            raise GpuError("NVML backend not opened")
        self._drain_xids()
        return [self._one(i, h) for i, h in enumerate(self._handles)]

    def close(self) -> None:
        if self.nv is not None:
            try:
                if self._events is not None:
                    self.nv.nvmlEventSetFree(self._events)
                self.nv.nvmlShutdown()
            except self.nv.NVMLError:
                pass
            self.nv = None

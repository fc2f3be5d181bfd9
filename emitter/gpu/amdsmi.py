"""AMD GPUs through ROCm's ``amdsmi`` Python package.

UNVERIFIED ON HARDWARE: this machine has no GPU.  The calls follow the
amdsmi Python API reference (ROCm 6.x); run ``tests/gpu/check_hardware.py``
on an AMD node to compare with ``amd-smi metric --json``.

XID equivalent: AMD reports RAS events (uncorrectable ECC, GPU reset, ring
hang...) through amdsmi's event notification API; the last event's numeric
type is reported as ``hw.gpu.xid``.  Retired pages = ``amdsmi_get_gpu_bad_page_info``.
Throttle: bit 1 when ``throttle_status`` from the GPU metrics table is set.
"""

from __future__ import annotations

from emitter import contract as c
from emitter.gpu.base import GpuBackend, GpuError, GpuSample


def available() -> bool:
    try:
        import amdsmi  # noqa: F401
    except ImportError:
        return False
    return True


def _value(v):
    """amdsmi returns numbers, 'N/A' strings, or {'value', 'unit'} dicts."""
    if isinstance(v, dict):
        v = v.get("value")
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


class AmdSmiBackend(GpuBackend):
    name = "amdsmi"

    def __init__(self):
        self.a = None
        self._handles = []
        self._last_ras: dict[int, int] = {}
        self._events = False

    def open(self) -> None:
        import amdsmi as a

        try:
            a.amdsmi_init(a.AmdSmiInitFlags.INIT_AMD_GPUS)
        except a.AmdSmiException as exc:
            raise GpuError(f"amdsmi init failed ({exc}): is the amdgpu driver loaded?") from None
        self.a = a
        self._handles = list(a.amdsmi_get_processor_handles())
        try:
            mask = 0
            for name in ("GPU_PRE_RESET", "GPU_POST_RESET", "RING_HANG"):
                mask |= int(getattr(a.AmdSmiEvtNotificationType, name))
            for h in self._handles:
                a.amdsmi_init_gpu_event_notification(h)
                a.amdsmi_set_gpu_event_notification_mask(h, mask)
            self._events = True
        except Exception:  # noqa: BLE001 - optional: older ROCm or no permission
            self._events = False

    def _try(self, fn, *args):
        try:
            return fn(*args)
        except Exception:  # noqa: BLE001 - AmdSmiException and friends: unsupported -> None
            return None

    def _drain_events(self) -> None:
        if not self._events:
            return
        events = self._try(self.a.amdsmi_get_gpu_event_notification, 0) or []
        index = {id(h): i for i, h in enumerate(self._handles)}
        for ev in events[:64]:
            i = index.get(id(ev.get("processor_handle")), None)
            code = ev.get("event")
            if i is not None and code is not None:
                self._last_ras[i] = int(getattr(code, "value", code))

    def sample(self) -> list[GpuSample]:
        a = self.a
        if a is None:
            raise GpuError("amdsmi backend not opened")
        self._drain_events()
        out = []
        for i, h in enumerate(self._handles):
            act = self._try(a.amdsmi_get_gpu_activity, h) or {}
            used = self._try(a.amdsmi_get_gpu_memory_usage, h, a.AmdSmiMemoryType.VRAM)
            total = self._try(a.amdsmi_get_gpu_memory_total, h, a.AmdSmiMemoryType.VRAM)
            power = self._try(a.amdsmi_get_power_info, h) or {}
            temp = self._try(a.amdsmi_get_temp_metric, h, a.AmdSmiTemperatureType.HOTSPOT,
                             a.AmdSmiTemperatureMetric.CURRENT)
            clk = self._try(a.amdsmi_get_clock_info, h, a.AmdSmiClkType.GFX) or {}
            ecc = self._try(a.amdsmi_get_gpu_total_ecc_count, h) or {}
            bad = self._try(a.amdsmi_get_gpu_bad_page_info, h)
            metrics = self._try(a.amdsmi_get_gpu_metrics_info, h) or {}
            asic = self._try(a.amdsmi_get_gpu_asic_info, h) or {}
            util = _value(act.get("gfx_activity"))
            p = _value(power.get("current_socket_power"))
            if p is None:
                p = _value(power.get("average_socket_power"))
            thr = _value(metrics.get("throttle_status"))
            out.append(GpuSample(
                index=i, uuid=self._try(a.amdsmi_get_gpu_device_uuid, h),
                model=asic.get("market_name"), vendor="amd", source="amdsmi",
                metrics={
                    c.M_GPU_UTILIZATION: None if util is None else util / 100.0,
                    c.M_GPU_MEMORY_USAGE: _value(used),
                    c.M_GPU_MEMORY_LIMIT: _value(total),
                    c.M_GPU_POWER: p,
                    c.M_GPU_TEMPERATURE: _value(temp),
                    c.M_GPU_CLOCK_SM: _value(clk.get("clk")),
                    c.M_GPU_ECC_SBE: _value(ecc.get("correctable_count")),
                    c.M_GPU_ECC_DBE: _value(ecc.get("uncorrectable_count")),
                    c.M_GPU_XID: self._last_ras.get(i, 0),
                    c.M_GPU_RETIRED_PAGES: None if not isinstance(bad, list) else len(bad),
                    c.M_GPU_THROTTLE: None if thr is None else (1 if thr else 0),
                }))
        return out

    def close(self) -> None:
        if self.a is not None:
            try:
                if self._events:
                    for h in self._handles:
                        self._try(self.a.amdsmi_stop_gpu_event_notification, h)
                self.a.amdsmi_shut_down()
            except Exception:  # noqa: BLE001
                pass
            self.a = None

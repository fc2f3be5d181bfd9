"""Replay recorded tool output as if it were a live GPU library.

Reads ``nvidia-smi -q -x`` XML or ``amd-smi metric --json`` (list form of
amd-smi 24.x, or the ``{"gpu_data": [...]}`` form of newer releases) and
returns the same GpuSample values every round.  ``block`` simulates a hung
driver: ``sample()`` sleeps that many seconds (``True``/inf: until closed).
Used by tests, the demo and the benchmark; the parsers are pure functions.
"""

from __future__ import annotations

import json
import math
import re
import threading
import xml.etree.ElementTree as ET

from emitter import contract as c
from emitter.gpu.base import GpuBackend, GpuError, GpuSample

_NUM = re.compile(r"^\s*(-?[0-9]+(?:\.[0-9]+)?)")
_MIB = 1024 * 1024


def _num(text):
    """'81559 MiB' -> 81559.0; 'N/A', '' or None -> None."""
    if text is None:
        return None
    m = _NUM.match(str(text))
    return float(m.group(1)) if m else None


def _int(x):
    return None if x is None else int(x)


# nvidia-smi's clocks_event_reasons element -> NVML's nvmlClocksEventReason bit.
NV_THROTTLE_BITS = {
    "gpu_idle": 0x1, "applications_clocks_setting": 0x2, "sw_power_cap": 0x4,
    "hw_slowdown": 0x8, "sync_boost": 0x10, "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40, "hw_power_brake_slowdown": 0x80,
    "display_clocks_setting": 0x100,
}


def parse_nvidia_smi_xml(text: str) -> list[GpuSample]:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise GpuError(f"not nvidia-smi -q -x output: {exc}") from None
    if root.tag != "nvidia_smi_log":
        raise GpuError(f"not nvidia-smi -q -x output (root element <{root.tag}>)")
    out = []
    for i, g in enumerate(root.findall("gpu")):
        def t(path):
            el = g.find(path)
            return el.text.strip() if el is not None and el.text else None

        throttle = 0
        reasons = g.find("clocks_event_reasons")
        prefix = "clocks_event_reason_"
        if reasons is None:  # drivers before 535
            reasons, prefix = g.find("clocks_throttle_reasons"), "clocks_throttle_reason_"
        if reasons is not None:
            for el in reasons:
                bit = NV_THROTTLE_BITS.get(el.tag[len(prefix):])
                if bit and (el.text or "").strip() == "Active":
                    throttle |= bit
        sbe = _num(t("ecc_errors/volatile/dram_correctable"))
        dbe = _num(t("ecc_errors/volatile/dram_uncorrectable"))
        if sbe is None:  # pre-Hopper layout
            sbe = _num(t("ecc_errors/volatile/single_bit/total"))
            dbe = _num(t("ecc_errors/volatile/double_bit/total"))
        else:
            sbe += _num(t("ecc_errors/volatile/sram_correctable")) or 0
            dbe += sum(_num(t(f"ecc_errors/volatile/{k}")) or 0
                       for k in ("sram_uncorrectable_parity", "sram_uncorrectable_secded"))
        retired = None
        rr = [_num(t(f"remapped_rows/remapped_row_{k}")) for k in ("corr", "unc")]
        if any(x is not None for x in rr):
            retired = sum(x or 0 for x in rr)
        else:
            rp = [_num(t(f"retired_pages/{k}/retired_count"))
                  for k in ("multiple_single_bit_retirement", "double_bit_retirement")]
            if any(x is not None for x in rp):
                retired = sum(x or 0 for x in rp)
        power = _num(t("gpu_power_readings/power_draw")) or _num(t("gpu_power_readings/instant_power_draw")) \
            or _num(t("power_readings/power_draw"))
        util = _num(t("utilization/gpu_util"))
        used, total = _num(t("fb_memory_usage/used")), _num(t("fb_memory_usage/total"))
        minor = _num(t("minor_number"))
        out.append(GpuSample(
            index=i, uuid=t("uuid"), model=t("product_name"), vendor="nvidia", source="replay",
            metrics={
                c.M_GPU_UTILIZATION: None if util is None else util / 100.0,
                c.M_GPU_MEMORY_USAGE: None if used is None else int(used * _MIB),
                c.M_GPU_MEMORY_LIMIT: None if total is None else int(total * _MIB),
                c.M_GPU_POWER: power,
                c.M_GPU_TEMPERATURE: _num(t("temperature/gpu_temp")),
                c.M_GPU_CLOCK_SM: _num(t("clocks/sm_clock")),
                c.M_GPU_ECC_SBE: _int(sbe),
                c.M_GPU_ECC_DBE: _int(dbe),
                c.M_GPU_XID: 0,  # nvidia-smi -q does not report XIDs (NVML events do)
                c.M_GPU_RETIRED_PAGES: _int(retired),
                c.M_GPU_THROTTLE: throttle if reasons is not None else None,
            }))
        if minor is not None:
            out[-1].index = int(minor)
    return out


def _val(node, *path):
    for p in path:
        if not isinstance(node, dict):
            return None
        node = node.get(p)
    if isinstance(node, dict):
        node = node.get("value")
    return node if isinstance(node, (int, float)) and not isinstance(node, bool) else None


#: amd-smi power.throttle_status / throttle.*_violation_status -> a bitmask of our own
#: (documented in docs/agent.md): 1 throttled (any), 2 PPT, 4 socket thermal,
#: 8 VR thermal, 16 HBM thermal, 32 PROCHOT.
AMD_THROTTLE_BITS = {"ppt": 2, "socket_thermal": 4, "vr_thermal": 8, "hbm_thermal": 16, "prochot": 32}


def parse_amd_smi_metric_json(text: str, model: str | None = None) -> list[GpuSample]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise GpuError(f"not amd-smi metric --json output: {exc}") from None
    if isinstance(data, dict):
        data = data.get("gpu_data", data.get("gpu"))
    if not isinstance(data, list):
        raise GpuError("not amd-smi metric --json output (expected a list of GPUs or gpu_data)")
    out = []
    for g in data:
        if not isinstance(g, dict) or not isinstance(g.get("gpu"), int):
            continue
        throttle = 0
        power = g.get("power") if isinstance(g.get("power"), dict) else {}
        if str(power.get("throttle_status", "")).upper() == "THROTTLED":
            throttle |= 1
        thr = g.get("throttle") if isinstance(g.get("throttle"), dict) else {}
        for name, bit in AMD_THROTTLE_BITS.items():
            if str(thr.get(f"{name}_violation_status", "")).upper() == "ACTIVE":
                throttle |= bit | 1
        used, total = _val(g, "mem_usage", "used_vram"), _val(g, "mem_usage", "total_vram")
        util = _val(g, "usage", "gfx_activity")
        temp = _val(g, "temperature", "hotspot")
        if temp is None:
            temp = _val(g, "temperature", "edge")
        clk = _val(g, "clock", "gfx_0", "clk")
        ecc = g.get("ecc") if isinstance(g.get("ecc"), dict) else {}
        out.append(GpuSample(
            index=g["gpu"], uuid=None, model=model, vendor="amd", source="replay",
            metrics={
                c.M_GPU_UTILIZATION: None if util is None else util / 100.0,
                c.M_GPU_MEMORY_USAGE: None if used is None else int(used * _MIB),
                c.M_GPU_MEMORY_LIMIT: None if total is None else int(total * _MIB),
                c.M_GPU_POWER: _val(g, "power", "socket_power"),
                c.M_GPU_TEMPERATURE: temp,
                c.M_GPU_CLOCK_SM: clk,
                c.M_GPU_ECC_SBE: _int(_val(ecc, "total_correctable_count")),
                c.M_GPU_ECC_DBE: _int(_val(ecc, "total_uncorrectable_count")),
                # RAS equivalent of an XID: amd-smi metric has no event code; the
                # amdsmi backend reports RAS events, replay reports none.
                c.M_GPU_XID: 0,
                c.M_GPU_RETIRED_PAGES: None,  # amd-smi bad-pages, not part of metric
                c.M_GPU_THROTTLE: throttle,
            }))
    return out


class ReplayBackend(GpuBackend):
    name = "replay"

    def __init__(self, path: str, *, block: float | bool | None = None, model: str | None = None):
        self.path = str(path)
        self.block = block
        self.model = model
        self._samples: list[GpuSample] | None = None
        self._closed = threading.Event()
        self.calls = 0

    def open(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise GpuError(f"GPU replay file {self.path}: {exc.strerror}") from None
        if text.lstrip().startswith("<"):
            self._samples = parse_nvidia_smi_xml(text)
        else:
            self._samples = parse_amd_smi_metric_json(text, self.model or "AMD Instinct MI300X")
        if not self._samples:
            raise GpuError(f"GPU replay file {self.path} lists no GPUs")

    def sample(self) -> list[GpuSample]:
        self.calls += 1
        if self.block:
            wait = None if self.block is True or (isinstance(self.block, float) and math.isinf(self.block)) \
                else float(self.block)
            self._closed.wait(wait)
        if self._samples is None:
            self.open()
        return [GpuSample(s.index, s.uuid, s.model, s.vendor, s.source, dict(s.metrics))
                for s in self._samples]

    def close(self) -> None:
        self._closed.set()

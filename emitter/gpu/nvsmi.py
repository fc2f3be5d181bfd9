"""``nvidia-smi -q -x`` XML -> GpuSample: every layout found in real recordings.

Pure functions (no I/O).  Tested on verbatim public recordings in
``emitter/fixtures/gpu/recorded/`` (see SOURCES.md there): driver 515 (T4),
535 (A100 with MIG), 595 (RTX 4000 Ada), and on the older layout below.

Layouts the parser reads (each element may be ``N/A``: the value is then
unknown, never 0):

* ECC, volatile counters since the driver loaded:
  - before driver ~510: ``single_bit/total`` and ``double_bit/total``;
  - 510..535: ``sram_correctable``, ``sram_uncorrectable`` (one element),
    ``dram_correctable``, ``dram_uncorrectable``;
  - later: ``sram_uncorrectable`` split into ``sram_uncorrectable_parity`` and
    ``sram_uncorrectable_secded``.
  Corrected = SRAM + DRAM corrected; uncorrected = SRAM + DRAM uncorrected,
  which is what NVML's ``nvmlDeviceGetTotalEccErrors`` counts.
* Clock reasons: ``clocks_event_reasons/clocks_event_reason_*`` (535+) or
  ``clocks_throttle_reasons/clocks_throttle_reason_*`` (older), folded into
  NVML's ``nvmlClocksEventReason*`` bitmask.
* Power: ``gpu_power_readings/power_draw`` (535), ``average_power_draw``
  (what ``nvmlDeviceGetPowerUsage`` returns on 550+; ``instant_power_draw``
  only when no average is given), or ``power_readings/power_draw`` (older).
* MIG: ``mig_mode/current_mig``; a GPU in MIG mode reports no GPU utilization
  (``N/A``), so none is reported.

The GPU index is ``minor_number``: the N of ``/dev/nvidiaN``, which is the
number Slurm puts in ``CUDA_VISIBLE_DEVICES``/``SLURM_JOB_GPUS`` for
Prolog/Epilog (it takes the trailing digits of the gres.conf ``File=``).  A
recording without it (Windows) falls back to the position in the file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from emitter import contract as c
from emitter.gpu.base import GpuError, GpuSample

_NUM = re.compile(r"^\s*(-?[0-9]+(?:\.[0-9]+)?)")
MIB = 1024 * 1024

#: nvidia-smi's reason element suffix -> NVML's nvmlClocksEventReason bit (nvml.h).
NV_THROTTLE_BITS = {
    "gpu_idle": 0x1, "applications_clocks_setting": 0x2, "sw_power_cap": 0x4,
    "hw_slowdown": 0x8, "sync_boost": 0x10, "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40, "hw_power_brake_slowdown": 0x80,
    "display_clocks_setting": 0x100,
    "unknown": 0x8000000000000000,  # old drivers only (nvmlClocksThrottleReasonUnknown)
}


def num(text):
    """'81559 MiB' -> 81559.0; 'N/A', '', 'Requested functionality has been
    deprecated' or None -> None."""
    if text is None:
        return None
    m = _NUM.match(str(text))
    return float(m.group(1)) if m else None


def _int(x):
    return None if x is None else int(x)


def _text(g, path):
    el = g.find(path)
    return el.text.strip() if el is not None and el.text else None


def _sum(values):
    """Sum of the known values; None when none is known (all N/A or absent)."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def ecc_volatile(g) -> tuple:
    """(corrected, uncorrected) volatile ECC counts, None where unknown."""
    vol = g.find("ecc_errors/volatile")
    if vol is None:
        return None, None
    if vol.find("single_bit") is not None or vol.find("double_bit") is not None:
        return _int(num(_text(vol, "single_bit/total"))), _int(num(_text(vol, "double_bit/total")))
    split = [num(_text(vol, k)) for k in ("sram_uncorrectable_parity", "sram_uncorrectable_secded")]
    if vol.find("sram_uncorrectable_parity") is not None or vol.find("sram_uncorrectable_secded") is not None:
        sram_unc = _sum(split)
    else:
        sram_unc = num(_text(vol, "sram_uncorrectable"))
    corrected = _sum([num(_text(vol, "sram_correctable")), num(_text(vol, "dram_correctable"))])
    uncorrected = _sum([sram_unc, num(_text(vol, "dram_uncorrectable"))])
    return _int(corrected), _int(uncorrected)


def throttle_mask(g):
    """NVML clock-event bitmask, or None when the recording has no reasons."""
    reasons, prefix = g.find("clocks_event_reasons"), "clocks_event_reason_"
    if reasons is None:
        reasons, prefix = g.find("clocks_throttle_reasons"), "clocks_throttle_reason_"
    if reasons is None:
        return None
    mask = 0
    known = False
    for el in reasons:
        bit = NV_THROTTLE_BITS.get(el.tag[len(prefix):]) if el.tag.startswith(prefix) else None
        state = (el.text or "").strip()
        if bit and state in ("Active", "Not Active"):
            known = True
            if state == "Active":
                mask |= bit
    return mask if known else None


def retired(g):
    """Remapped rows (Ampere+: corrected + uncorrected) or retired pages (older)."""
    rows = [num(_text(g, f"remapped_rows/remapped_row_{k}")) for k in ("corr", "unc")]
    if any(x is not None for x in rows):
        return _int(_sum(rows))
    pages = [num(_text(g, f"retired_pages/{k}/retired_count"))
             for k in ("multiple_single_bit_retirement", "double_bit_retirement")]
    return _int(_sum(pages))


def power(g):
    for path in ("gpu_power_readings/power_draw", "gpu_power_readings/average_power_draw",
                 "gpu_power_readings/instant_power_draw", "power_readings/power_draw",
                 "power_readings/average_power_draw", "power_readings/instant_power_draw"):
        v = num(_text(g, path))
        if v is not None:
            return v
    return None


def mig_enabled(g):
    """True/False from ``mig_mode/current_mig``; None on GPUs without MIG."""
    cur = _text(g, "mig_mode/current_mig")
    return {"Enabled": True, "Disabled": False}.get(cur)


def gpu_sample(g, position: int) -> GpuSample:
    util = num(_text(g, "utilization/gpu_util"))
    used, total = num(_text(g, "fb_memory_usage/used")), num(_text(g, "fb_memory_usage/total"))
    sbe, dbe = ecc_volatile(g)
    minor = num(_text(g, "minor_number"))
    mig = mig_enabled(g)
    return GpuSample(
        index=int(minor) if minor is not None else position,
        uuid=_text(g, "uuid"), model=_text(g, "product_name"), vendor="nvidia", source="replay",
        mig=mig, mig_devices=len(g.findall("mig_devices/mig_device")),
        metrics={
            c.M_GPU_UTILIZATION: None if util is None or mig else util / 100.0,
            c.M_GPU_MEMORY_USAGE: None if used is None else int(used * MIB),
            c.M_GPU_MEMORY_LIMIT: None if total is None else int(total * MIB),
            c.M_GPU_POWER: power(g),
            c.M_GPU_TEMPERATURE: num(_text(g, "temperature/gpu_temp")),
            c.M_GPU_CLOCK_SM: num(_text(g, "clocks/sm_clock")),
            c.M_GPU_ECC_SBE: sbe,
            c.M_GPU_ECC_DBE: dbe,
            c.M_GPU_XID: 0,  # nvidia-smi -q does not report XIDs (NVML events do)
            c.M_GPU_RETIRED_PAGES: retired(g),
            c.M_GPU_THROTTLE: throttle_mask(g),
        })


def parse_nvidia_smi_xml(text: str) -> list[GpuSample]:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise GpuError(f"not nvidia-smi -q -x output: {exc}") from None
    if root.tag != "nvidia_smi_log":
        raise GpuError(f"not nvidia-smi -q -x output (root element <{root.tag}>)")
    return [gpu_sample(g, i) for i, g in enumerate(root.findall("gpu"))]

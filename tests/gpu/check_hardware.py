#!/usr/bin/env python3
"""Verify the GPU backends on a real GPU node (not part of the test suite).

Run on a node with GPUs, from the repository:

    .venv/bin/pip install nvidia-ml-py        # or: the ROCm amdsmi package
    .venv/bin/python tests/gpu/check_hardware.py [--backend nvml|amdsmi|auto] [--timeout 5]

It samples every GPU through hookscope's backend (with the same timeout
wrapper the agent uses), runs the vendor tool (`nvidia-smi -q -x` or
`amd-smi metric --json`), parses that with the replay parser, and prints both
side by side with a verdict per metric.  On NVIDIA it then checks, against
NVML itself:

* index scheme: each GPU's index is its minor number (N of /dev/nvidiaN, what
  Slurm puts in CUDA_VISIBLE_DEVICES/SLURM_JOB_GPUS for Prolog/Epilog), equal
  to nvidia-smi's minor_number for the same UUID; the NVML enumeration
  position is printed beside it (it may differ);
* UUIDs: every GPU UUID and MIG device UUID resolves to its GPU's index, as a
  Slurm 25.11 CUDA_VISIBLE_DEVICES of UUIDs would (and the one in this
  process's environment, if any, is resolved and printed);
* current and legacy NVML calls agree where both exist
  (nvmlDeviceGetTemperatureV vs nvmlDeviceGetTemperature, ClocksEventReasons vs
  ClocksThrottleReasons), and memory v2 "used" is at most v1 "used";
* model and MIG mode equal nvidia-smi's product_name and current_mig;
* the samples survive the OTLP encoder and the collector's decoder unchanged.

Exit status 0 when every check passes (a metric unsupported on both sides
passes); 1 otherwise; 2 when no GPU backend is usable here.  Paste the output
into an issue so the docs can say which paths were verified on which hardware.
"""

import argparse
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from emitter import contract as c  # noqa: E402
from emitter.gpu import detect  # noqa: E402
from emitter.gpu.jobs import JobMap, resolve_uuid, uuid_index_of  # noqa: E402
from emitter.gpu.replay import parse_amd_smi_metric_json, parse_nvidia_smi_xml  # noqa: E402

# Live values move between the two reads: tolerances per metric (absolute, relative).
TOL = {
    c.M_GPU_UTILIZATION: (0.15, 0), c.M_GPU_POWER: (30, 0.15), c.M_GPU_TEMPERATURE: (3, 0),
    c.M_GPU_CLOCK_SM: (150, 0.1), c.M_GPU_MEMORY_USAGE: (512 << 20, 0.02),
}


class Report:
    def __init__(self):
        self.bad = 0

    def check(self, ok: bool, what: str, detail: str = "") -> None:
        self.bad += 0 if ok else 1
        print(f"  [{'ok' if ok else 'FAIL'}] {what}" + (f": {detail}" if detail else ""))


def nvidia_smi_xml():
    if not shutil.which("nvidia-smi"):
        return None
    return subprocess.run(["nvidia-smi", "-q", "-x"], capture_output=True, text=True, timeout=60).stdout


def tool_samples(vendor, xml_text):
    if vendor == "nvidia" and xml_text:
        return parse_nvidia_smi_xml(xml_text)
    if vendor == "amd" and shutil.which("amd-smi"):
        out = subprocess.run(["amd-smi", "metric", "--json"], capture_output=True, text=True, timeout=60).stdout
        return parse_amd_smi_metric_json(out)
    return None


def close_enough(name, a, b):
    if a is None or b is None:
        return a is None and b is None
    ab, rel = TOL.get(name, (0, 0))
    return abs(a - b) <= max(ab, rel * max(abs(a), abs(b)))


def compare_metrics(samples, tool, rep: Report) -> None:
    by_index = {s.index: s for s in tool or []}
    for s in samples:
        t = by_index.get(s.index)
        print(f"\nGPU {s.index}  uuid={s.uuid}  model={s.model}  mig={s.mig}"
              + (f"   | tool: uuid={t.uuid} model={t.model} mig={t.mig}" if t else "   | (no vendor tool output)"))
        if t is not None:
            rep.check(t.uuid == s.uuid, "same GPU at this index in the backend and the tool (index scheme)",
                      f"{s.uuid} vs {t.uuid}")
            rep.check(t.model == s.model, "model as the tool names it", f"{s.model!r} vs {t.model!r}")
            rep.check(t.mig == s.mig, "MIG mode as the tool reports it", f"{s.mig} vs {t.mig}")
        for name in c.GPU_METRICS:
            mine = s.metrics.get(name)
            theirs = t.metrics.get(name) if t else None
            if t is None:
                verdict = "-"
            elif name == c.M_GPU_XID:
                verdict = "n/a (tool does not report XIDs)"
            elif close_enough(name, mine, theirs):
                verdict = "ok"
            else:
                verdict = "DIFFERS"
                rep.bad += 1
            print(f"  {name:32} {mine!s:>16} {theirs!s:>16}  {verdict}")


def check_nvml_calls(xml_text, rep: Report) -> None:
    """Index scheme, minor numbers and current-vs-legacy calls, straight from NVML."""
    import pynvml as nv

    smi_minor = {}
    if xml_text:
        for g in ET.fromstring(xml_text).findall("gpu"):
            smi_minor[(g.findtext("uuid") or "").strip()] = (g.findtext("minor_number") or "").strip()
    print("\nNVML index scheme and calls")
    for pos in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(pos)
        uuid = nv.nvmlDeviceGetUUID(h)
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        minor = nv.nvmlDeviceGetMinorNumber(h)
        print(f"  NVML position {pos}: minor {minor}, {uuid}, /dev/nvidia{minor} "
              f"{'exists' if os.path.exists(f'/dev/nvidia{minor}') else 'MISSING'}")
        if uuid in smi_minor:
            rep.check(smi_minor[uuid] == str(minor), f"nvidia-smi minor_number of {uuid} is NVML's minor",
                      f"{smi_minor[uuid]} vs {minor}")
        _same(rep, "temperature V vs legacy",
              lambda: nv.nvmlDeviceGetTemperatureV(h, nv.NVML_TEMPERATURE_GPU),
              lambda: nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU), tol=2)
        _same(rep, "ClocksEventReasons vs ClocksThrottleReasons",
              lambda: nv.nvmlDeviceGetCurrentClocksEventReasons(h),
              lambda: nv.nvmlDeviceGetCurrentClocksThrottleReasons(h), tol=0)
        try:
            v2, v1 = nv.nvmlDeviceGetMemoryInfo(h, nv.nvmlMemory_v2), nv.nvmlDeviceGetMemoryInfo(h)
            rep.check(v2.used <= v1.used and v2.total == v1.total, "memory v2 used <= v1 used, same total",
                      f"v2 {v2.used}/{v2.total} v1 {v1.used}/{v1.total}")
        except nv.NVMLError as exc:
            print(f"  memory v2 not available here ({exc}): the backend falls back to v1")


def _same(rep, what, new, old, tol):
    import pynvml as nv
    try:
        a = new()
    except nv.NVMLError as exc:
        print(f"  {what}: the current call is not available ({exc}); the backend uses the legacy one")
        return
    try:
        b = old()
    except nv.NVMLError as exc:
        print(f"  {what}: the legacy call is gone ({exc}); the current one answered {a}")
        return
    rep.check(abs(a - b) <= tol, what, f"{a} vs {b}")


def check_uuids(samples, rep: Report) -> None:
    print("\nUUID -> index (Slurm 25.11 puts UUIDs in CUDA_VISIBLE_DEVICES for Prolog/Epilog)")
    idx = uuid_index_of(samples)
    for s in samples:
        for u in (s.uuid, *s.mig_uuids):
            if u:
                rep.check(resolve_uuid(u, idx) == s.index, f"{u} resolves to GPU {s.index}")
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env:
        jm = JobMap()
        jm.learn(samples)
        print(f"  this environment's CUDA_VISIBLE_DEVICES={env!r} names GPU(s) "
              f"{jm.indices({'cuda_visible_devices': env})}")


def check_otlp_roundtrip(samples, rep: Report) -> None:
    from collector import decode
    from emitter import otlp
    import time

    now = time.time_ns()
    dicts = [dict(s.as_dict("1"), ts=now) for s in samples]
    data = otlp.encode_metrics(dicts, node="check", cluster="check", ts=now)
    d = decode.decode_message(data, "hookscope.metrics.check.check", 1, now)
    rows = getattr(d, "rows", {}).get("gpu_samples", [])
    rep.check(len(rows) == len(samples), "OTLP encode -> collector decode keeps one row per GPU",
              f"{len(rows)} rows for {len(samples)} GPUs")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto", choices=["auto", "nvml", "amdsmi"])
    ap.add_argument("--timeout", type=float, default=5.0)
    a = ap.parse_args()
    tb = detect(a.backend, timeout_s=a.timeout, log=lambda m: print("log:", m))
    if tb is None:
        print("no usable GPU backend here (need nvidia-ml-py + driver, or amdsmi + amdgpu)")
        return 2
    samples = tb.sample()
    print(f"backend {tb.name}: {len(samples)} GPU(s), healthy={tb.healthy}, last error={tb.last_error}")
    if not samples:
        return 1
    rep = Report()
    vendor = samples[0].vendor
    xml_text = nvidia_smi_xml() if vendor == "nvidia" else None
    compare_metrics(samples, tool_samples(vendor, xml_text), rep)
    if tb.name == "nvml":
        check_nvml_calls(xml_text, rep)
    check_uuids(samples, rep)
    check_otlp_roundtrip(samples, rep)
    tb.close()
    print(f"\n{rep.bad} check(s) failed" if rep.bad else "\nall checks pass")
    return 1 if rep.bad else 0


if __name__ == "__main__":
    sys.exit(main())

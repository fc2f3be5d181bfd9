#!/usr/bin/env python3
"""Verify the NVML and amdsmi backends on a real GPU node (not part of the test suite).

Run on a node with GPUs, from the repository:

    .venv/bin/pip install nvidia-ml-py        # or: the ROCm amdsmi package
    .venv/bin/python tests/gpu/check_hardware.py [--backend nvml|amdsmi|auto] [--timeout 5]

It samples every GPU through hookscope's backend (with the same timeout
wrapper the agent uses), runs the vendor tool (`nvidia-smi -q -x` or
`amd-smi metric --json`), parses that with the replay parser, and prints both
side by side with a verdict per metric.  Exit status 0 when every metric
either matches within tolerance or is unsupported on both sides; 1 otherwise;
2 when no GPU backend is usable here.  Paste the output into an issue so the
docs can say which paths were verified on which hardware.
"""

import argparse
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from emitter import contract as c  # noqa: E402
from emitter.gpu.base import detect  # noqa: E402
from emitter.gpu.replay import parse_amd_smi_metric_json, parse_nvidia_smi_xml  # noqa: E402

# Live values move between the two reads: tolerances per metric (absolute, relative).
TOL = {
    c.M_GPU_UTILIZATION: (0.15, 0), c.M_GPU_POWER: (30, 0.15), c.M_GPU_TEMPERATURE: (3, 0),
    c.M_GPU_CLOCK_SM: (150, 0.1), c.M_GPU_MEMORY_USAGE: (512 << 20, 0.02),
}


def tool_samples(vendor):
    if vendor == "nvidia" and shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "-q", "-x"], capture_output=True, text=True, timeout=60).stdout
        return parse_nvidia_smi_xml(out)
    if vendor == "amd" and shutil.which("amd-smi"):
        out = subprocess.run(["amd-smi", "metric", "--json"], capture_output=True, text=True, timeout=60).stdout
        return parse_amd_smi_metric_json(out)
    return None


def close_enough(name, a, b):
    if a is None or b is None:
        return a is None and b is None
    ab, rel = TOL.get(name, (0, 0))
    return abs(a - b) <= max(ab, rel * max(abs(a), abs(b)))


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
    vendor = samples[0].vendor
    tool = tool_samples(vendor)
    by_index = {s.index: s for s in tool or []}
    bad = 0
    for s in samples:
        t = by_index.get(s.index)
        print(f"\nGPU {s.index}  uuid={s.uuid}  model={s.model}"
              + (f"   | tool: uuid={t.uuid} model={t.model}" if t else "   | (no vendor tool output)"))
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
                bad += 1
            print(f"  {name:32} {mine!s:>16} {theirs!s:>16}  {verdict}")
    tb.close()
    print(f"\n{bad} metric(s) differ" if bad else "\nall metrics agree with the vendor tool")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

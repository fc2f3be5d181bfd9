"""Replay recorded tool output as if it were a live GPU library.

Reads ``nvidia-smi -q -x`` XML (parsed by :mod:`emitter.gpu.nvsmi`) or ``amd-smi metric --json`` (list form of
amd-smi 24.x, or the ``{"gpu_data": [...]}`` form of newer releases) and
returns the same GpuSample values every round.  ``block`` simulates a hung
driver: ``sample()`` sleeps that many seconds (``True``/inf: until closed).
Used by tests, the demo and the benchmark; the parsers are pure functions.

A *timeline* (a JSON file with the key ``hookscope_replay_timeline``) replays
a recording with per-round changes on top, so a replay can show a load curve
and an XID or ECC event at a chosen moment (``make demo``).  It is labelled
synthetic wherever it is used: the values it sets are no tool's output::

    {"hookscope_replay_timeline": 1, "recording": "nvidia-smi-q-x-8xH100.xml",
     "start": 1796614000.0, "step_s": 1.0,
     "rounds": [{"0": {"hw.gpu.utilization": 0.9}}, {}, {"1": {"hookscope.gpu.xid": 79}}]}

``recording`` is relative to the timeline file.  Round ``i`` applies from
``start + i * step_s`` (wall clock; without ``start``: the ``i``-th sample
call); changes accumulate, so a counter stays where a round put it.  Round 0
also holds before ``start``, and the last round after the end.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time

from emitter import contract as c
from emitter.gpu.base import GpuBackend, GpuError, GpuSample
from emitter.gpu.nvsmi import MIB as _MIB, NV_THROTTLE_BITS, num as _num, parse_nvidia_smi_xml  # noqa: F401


def _int(x):
    return None if x is None else int(x)


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


TIMELINE_KEY = "hookscope_replay_timeline"


def load_timeline(path: str, data: dict, base: list[GpuSample]) -> list[dict]:
    """The cumulative state after each round: [{gpu index: {metric: value}}].
    A GPU or metric the recording does not have is an error naming the round."""
    rounds = data.get("rounds")
    if not isinstance(rounds, list):
        raise GpuError(f"GPU replay timeline {path}: 'rounds' must be a list of {{gpu index: {{metric: value}}}}")
    known = {s.index: set(s.metrics) for s in base}
    state: dict = {}
    out = []
    for i, rnd in enumerate(rounds):
        if not isinstance(rnd, dict):
            raise GpuError(f"GPU replay timeline {path}: round {i} must be an object")
        for gpu, changes in rnd.items():
            idx = int(gpu) if str(gpu).isdigit() else None
            if idx not in known or not isinstance(changes, dict):
                raise GpuError(f"GPU replay timeline {path}: round {i} names GPU {gpu!r}; the recording "
                               f"has GPUs {sorted(known)}")
            for name, v in changes.items():
                if name not in known[idx] or not (v is None or isinstance(v, (int, float))):
                    raise GpuError(f"GPU replay timeline {path}: round {i} GPU {idx}: {name} = {v!r} is not "
                                   f"a number for a metric of the recording ({', '.join(sorted(known[idx]))})")
                state.setdefault(idx, {})[name] = v
        out.append({k: dict(v) for k, v in state.items()})
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
        self._rounds: list[dict] = []
        self._start: float | None = None
        self._step = 1.0

    def open(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise GpuError(f"GPU replay file {self.path}: {exc.strerror}") from None
        timeline = _timeline(text)
        if timeline is not None:
            self._open_timeline(timeline)
        elif text.lstrip().startswith("<"):
            self._samples = parse_nvidia_smi_xml(text)
        else:
            # amd-smi metric carries no product name: the model is only what
            # the caller knows (ReplayBackend(model=...)), never a guess.
            self._samples = parse_amd_smi_metric_json(text, self.model)
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
        out = [s.copy() for s in self._samples]
        if self._rounds:
            i = self.calls - 1 if self._start is None else math.floor((time.time() - self._start) / self._step)
            state = self._rounds[min(max(i, 0), len(self._rounds) - 1)]
            for smp in out:
                smp.metrics.update(state.get(smp.index, {}))
        return out

    def _open_timeline(self, data: dict) -> None:
        rec = data.get("recording")
        if not isinstance(rec, str):
            raise GpuError(f"GPU replay timeline {self.path}: 'recording' must name the recorded file")
        base = ReplayBackend(os.path.join(os.path.dirname(os.path.abspath(self.path)), rec), model=self.model)
        base.open()
        self._samples = base._samples
        self._rounds = load_timeline(self.path, data, self._samples)
        start, step = data.get("start"), data.get("step_s", 1.0)
        if not (start is None or isinstance(start, (int, float))) or not isinstance(step, (int, float)) \
                or step <= 0:
            raise GpuError(f"GPU replay timeline {self.path}: 'start' must be unix seconds and 'step_s' > 0")
        self._start, self._step = start, float(step)

    def close(self) -> None:
        self._closed.set()


def _timeline(text: str) -> dict | None:
    """The parsed timeline when ``text`` is one, else None (a recording)."""
    if not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and TIMELINE_KEY in data else None

"""GPU sampling for the agent: NVML, amdsmi and a replay backend behind one
protocol (``base.GpuBackend``), every library call bounded by a timeout.

``detect`` lives here, not in base: it imports the backends, which import
base, so base importing them back would be a module cycle."""

from __future__ import annotations

from emitter.gpu.base import GpuBackend, GpuError, GpuSample, TimedBackend  # noqa: F401


def detect(kind: str = "auto", *, replay_path: str | None = None, replay_block: float | None = None,
           timeout_s: float = 2.0, log=None) -> TimedBackend | None:
    """The node's backend: ``nvml``, ``amdsmi``, ``replay`` or ``none``; ``auto``
    tries NVML then amdsmi (both optional extras) and returns None when neither
    library or device is present."""
    log = log or (lambda msg: None)
    if kind in ("none", "", None):
        return None
    candidates = []
    if kind == "replay":
        from emitter.gpu.replay import ReplayBackend

        if not replay_path:
            raise GpuError("gpu backend 'replay' needs a recorded file: --gpu-replay FILE "
                           "(nvidia-smi -q -x XML or amd-smi metric --json)")
        candidates.append(ReplayBackend(replay_path, block=replay_block))
    elif kind in ("auto", "nvml"):
        from emitter.gpu.nvml import NvmlBackend, available as nvml_ok

        if nvml_ok():
            candidates.append(NvmlBackend())
        elif kind == "nvml":
            raise GpuError("gpu backend 'nvml' needs nvidia-ml-py: pip install 'hookscope[nvidia]'")
    if kind in ("auto", "amdsmi"):
        from emitter.gpu.amdsmi import AmdSmiBackend, available as amd_ok

        if amd_ok():
            candidates.append(AmdSmiBackend())
        elif kind == "amdsmi":
            raise GpuError("gpu backend 'amdsmi' needs the amdsmi Python package from ROCm "
                           "(/opt/rocm/share/amd_smi): pip install it into the agent's venv")
    if kind not in ("auto", "nvml", "amdsmi", "replay"):
        raise GpuError(f"unknown gpu backend {kind!r}: use auto, nvml, amdsmi, replay or none")
    for b in candidates:
        tb = TimedBackend(b, timeout_s, log)
        if tb.open():
            return tb
        log(f"GPU backend {b.name} not usable here: {tb.last_error}")
    return None

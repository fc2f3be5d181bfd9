"""GPU sampling for the agent: NVML, amdsmi and a replay backend behind one
protocol (``base.GpuBackend``), every library call bounded by a timeout."""

from emitter.gpu.base import GpuBackend, GpuSample, TimedBackend, detect  # noqa: F401

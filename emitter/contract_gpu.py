"""The GPU metrics part of the wire contract (read as ``emitter.contract.X``).

Metric names, instruments, units and data point attributes of the agent's GPU
samples, and the older names readers still accept.  Documented in
docs/contract.md; see emitter/contract.py for the rest of the contract.
"""

# GPU metrics.  The keys of a GPU sample's ``metrics`` and, where a name maps
# one to one, the OTLP metric name: OpenTelemetry hardware semantic
# conventions (SEMCONV_SCHEMA_URL) where they exist, hookscope's own facts
# under hookscope.gpu.*.  Instrument kinds, units and extra attributes:
# GPU_OTLP below; the names before this (hw.gpu.power, ...) in
# LEGACY_GPU_METRICS, which readers still accept (docs/contract.md).
M_GPU_UTILIZATION = "hw.gpu.utilization"  # ratio 0..1
M_GPU_MEMORY_USAGE = "hw.gpu.memory.usage"  # bytes
M_GPU_MEMORY_LIMIT = "hw.gpu.memory.limit"  # bytes
M_GPU_POWER = "hw.power"  # watts, hw.type=gpu
M_GPU_TEMPERATURE = "hw.temperature"  # celsius, hw.type=gpu
M_GPU_CLOCK_SM = "hookscope.gpu.clock.sm"  # MHz
# The two ECC counts are one OTLP metric, hw.errors, told apart by error.type:
# these two keys name them inside a sample (and in the span's GPU snapshot).
M_GPU_ECC_SBE = "hookscope.gpu.ecc.corrected"  # count, volatile
M_GPU_ECC_DBE = "hookscope.gpu.ecc.uncorrected"
M_GPU_XID = "hookscope.gpu.xid"  # last XID / RAS event code seen, 0 if none
M_GPU_RETIRED_PAGES = "hookscope.gpu.retired_pages"  # retired pages or remapped rows
M_GPU_THROTTLE = "hookscope.gpu.throttle_reasons"  # bitmask as reported by the driver
GPU_METRICS = (
    M_GPU_UTILIZATION, M_GPU_MEMORY_USAGE, M_GPU_MEMORY_LIMIT, M_GPU_POWER,
    M_GPU_TEMPERATURE, M_GPU_CLOCK_SM, M_GPU_ECC_SBE, M_GPU_ECC_DBE,
    M_GPU_XID, M_GPU_RETIRED_PAGES, M_GPU_THROTTLE,
)
# GPU data point attributes.
A_GPU_INDEX = "hookscope.gpu.index"  # minor number: what CUDA_VISIBLE_DEVICES names in Prolog/Epilog
A_GPU_ID = "hw.id"  # UUID
A_GPU_MODEL = "hw.model"
A_GPU_VENDOR = "hw.vendor"
A_GPU_SOURCE = "hookscope.gpu.source"  # nvml | amdsmi | replay
A_GPU_MIG = "hookscope.gpu.mig"  # MIG mode (bool), where the GPU has one
A_HW_TYPE = "hw.type"  # "gpu" on every GPU data point
A_ERROR_TYPE = "error.type"  # hw.errors: "corrected" | "uncorrected"
HW_TYPE_GPU = "gpu"
M_HW_ERRORS = "hw.errors"
#: Semantic conventions version the GPU metric names follow (schema_url).
SEMCONV_SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"
#: sample key -> (OTLP metric name, instrument, unit, extra data point attributes).
#: instrument: "gauge" | "updowncounter" (Sum, not monotonic) | "counter" (Sum, monotonic);
#: both Sums are cumulative.
GPU_OTLP = {
    M_GPU_UTILIZATION: ("hw.gpu.utilization", "gauge", "1", {}),
    M_GPU_MEMORY_USAGE: ("hw.gpu.memory.usage", "updowncounter", "By", {}),
    M_GPU_MEMORY_LIMIT: ("hw.gpu.memory.limit", "updowncounter", "By", {}),
    M_GPU_POWER: ("hw.power", "gauge", "W", {}),
    M_GPU_TEMPERATURE: ("hw.temperature", "gauge", "Cel", {}),
    M_GPU_CLOCK_SM: ("hookscope.gpu.clock.sm", "gauge", "MHz", {}),
    M_GPU_ECC_SBE: (M_HW_ERRORS, "counter", "{error}", {A_ERROR_TYPE: "corrected"}),
    M_GPU_ECC_DBE: (M_HW_ERRORS, "counter", "{error}", {A_ERROR_TYPE: "uncorrected"}),
    M_GPU_XID: ("hookscope.gpu.xid", "gauge", "1", {}),
    M_GPU_RETIRED_PAGES: ("hookscope.gpu.retired_pages", "gauge", "{page}", {}),
    M_GPU_THROTTLE: ("hookscope.gpu.throttle_reasons", "gauge", "1", {}),
}
#: OTLP metric names of schema version 1 before the semantic-conventions
#: rename -> the sample key they carried; readers accept both (stored data).
LEGACY_GPU_METRICS = {
    "hw.gpu.power": M_GPU_POWER,
    "hw.gpu.temperature": M_GPU_TEMPERATURE,
    "hw.gpu.clock.sm": M_GPU_CLOCK_SM,
    "hw.gpu.ecc.errors.corrected": M_GPU_ECC_SBE,
    "hw.gpu.ecc.errors.uncorrected": M_GPU_ECC_DBE,
    "hw.gpu.xid": M_GPU_XID,
    "hw.gpu.retired_pages": M_GPU_RETIRED_PAGES,
    "hw.gpu.throttle_reasons": M_GPU_THROTTLE,
}
LEGACY_A_GPU_INDEX = "hw.gpu.index"

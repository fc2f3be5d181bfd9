"""The one wire contract of hookscope.

Every name that crosses a process boundary lives here: journal record kinds
and fields, OpenTelemetry attribute names, NATS subjects, stream settings and
the schema version.  The runner, agent, collector, queries and dashboard import
it; nothing else spells these strings.  Documented in docs/contract.md.

This module is on the runner's hot path: stdlib only, and it imports json and
hashlib lazily inside the helpers (together ~7 ms at start-up, more than a
no-op hook script costs; the runner writes records with its own encoder,
proven byte-identical to canonical_json by tests/runner).
"""

#: Bumped when a journal record or a span's meaning changes incompatibly.
#: Older versions are upgraded on read by the collector; newer ones are
#: dead-lettered, never guessed at.
SCHEMA_VERSION = 1

# ---------------------------------------------------------------- contexts
CONTEXTS = (
    "prolog_slurmd",
    "epilog_slurmd",
    "prolog_slurmctld",
    "epilog_slurmctld",
    "prolog_task",
    "epilog_task",
    "prolog_srun",
    "epilog_srun",
)
#: Slurm's drain reason when a hook of this context fails (None: no drain).
DRAIN_REASON = {
    "prolog_slurmd": "Prolog error",
    "epilog_slurmd": "Epilog error",
}

# ---------------------------------------------------------------- journal
#: One journal file per hook invocation, JSON lines, canonical JSON per line.
JOURNAL_DIR_DEFAULT = "/var/spool/hookscope/journal"
JOURNAL_SUFFIX = ".jsonl"
#: File holding the node's hash-chain head ("<seq> <hash> <chain>"), updated under flock.
CHAIN_HEAD_FILE = "chain.head"
#: Hash of the record before the first one on a node.
CHAIN_GENESIS = "0" * 64

# Record kinds.
K_HOOK_STARTED = "hook_started"
K_SCRIPT_STARTED = "script_started"  # written BEFORE the script is spawned
K_SCRIPT_ENDED = "script_ended"
K_SCRIPT_SKIPPED = "script_skipped"  # filtered or skipped by the layout
K_HOOK_ENDED = "hook_ended"
K_SPOOL_EVICTED = "spool_evicted"  # the bounded spool dropped old files
K_JOURNAL_ERROR = "journal_error"  # damage found by the agent (truncation, bad hash)
K_NODE_EVENT = "node_event"  # a node state change observed (drain, down)
RECORD_KINDS = (
    K_HOOK_STARTED, K_SCRIPT_STARTED, K_SCRIPT_ENDED, K_SCRIPT_SKIPPED,
    K_HOOK_ENDED, K_SPOOL_EVICTED, K_JOURNAL_ERROR, K_NODE_EVENT,
)

# Fields common to every record.
R_VERSION = "v"
R_KIND = "kind"
R_SEQ = "seq"  # per-node, strictly increasing, no gaps unless evicted
R_PREV = "prev"  # hash of the record with seq-1 on this node
#: 16 hex chars naming the node's current chain: a re-created journal (wiped
#: spool, corrupt chain.head) starts a new chain at seq 1, and the store keys
#: journal rows by (cluster, node, chain, seq) so the two never collide.
R_CHAIN = "chain"
R_HASH = "hash"  # sha256 of the canonical JSON of the record without "hash"
R_TS = "ts"  # node wall clock, integer ns since the epoch
R_NODE = "node"
R_CLUSTER = "cluster"
R_HOOK_ID = "hook"  # 16 hex chars; also the hook span's span ID
R_PID = "pid"  # the runner's PID (to detect a runner that died)

# hook_started
R_CONTEXT = "context"
R_LAYOUT = "layout"
R_DIRS = "dirs"
R_TIMEOUT_S = "timeout_s"
R_JOB = "job"  # dict, keys are the J_* names below
# script_started / script_ended / script_skipped
R_INDEX = "index"  # position in run order, 0-based
R_PATH = "path"
R_SHA256 = "sha256"
R_SIZE = "size"
R_MODE = "mode"  # st_mode as an int
R_UID = "uid"
R_MTIME = "mtime"  # integer ns
R_EXIT = "exit_code"  # shell-style status (128+N for a signal); None while unknown
R_SIGNAL = "signal"  # signal number that ended the script, or None
R_TIMED_OUT = "timed_out"
R_REFUSED = "refused"  # reason string when the runner refused to run it, else None
R_REASON = "reason"  # for script_skipped and errors
R_DURATION_NS = "duration_ns"
R_OUTPUT = "output"  # combined stdout+stderr tail, redacted; only on failure by default
R_OUTPUT_TRUNCATED = "output_truncated"
R_EXPORTED = "exported"  # TaskProlog: names the scripts exported
R_UNSET = "unset"
# hook_ended
R_N_SCRIPTS = "n_scripts"
R_FAILED_INDEX = "failed_index"  # index of the script that decided the failure, or None
R_STATUS = "status"  # the exit status the runner returned to Slurm
R_WARNINGS = "warnings"  # list of strings (journal trouble, empty dir, ...)
# spool_evicted
R_EVICTED_FILES = "files"
R_EVICTED_BYTES = "bytes"
R_EVICTED_SEQS = "seqs"  # [first, last] sequence numbers dropped
# node_event
R_STATE = "state"
R_SOURCE = "source"

# Job metadata keys (inside R_JOB) and the SLURM_* variables they come from.
JOB_ENV = {
    "job_id": "SLURM_JOB_ID",
    "user": "SLURM_JOB_USER",
    "uid": "SLURM_JOB_UID",
    "partition": "SLURM_JOB_PARTITION",
    "nodelist": "SLURM_JOB_NODELIST",
    "cluster": "SLURM_CLUSTER_NAME",
    "account": "SLURM_JOB_ACCOUNT",
    "job_name": "SLURM_JOB_NAME",
    "array_job_id": "SLURM_ARRAY_JOB_ID",
    "array_task_id": "SLURM_ARRAY_TASK_ID",
    "restart_count": "SLURM_RESTART_COUNT",
    "step_id": "SLURM_STEP_ID",
    "gpus": "SLURM_JOB_GPUS",
    "cuda_visible_devices": "CUDA_VISIBLE_DEVICES",
    "rocr_visible_devices": "ROCR_VISIBLE_DEVICES",
}

# ---------------------------------------------------------------- OpenTelemetry
SERVICE_NAME = "hookscope"
# Resource attributes (semantic conventions where they exist).
A_SERVICE_NAME = "service.name"
A_SERVICE_VERSION = "service.version"
A_HOST_NAME = "host.name"
A_CLUSTER = "slurm.cluster.name"
A_SCHEMA_VERSION = "hookscope.schema.version"

# Span kinds we emit, in attribute A_SPAN_TYPE.
A_SPAN_TYPE = "hookscope.span.type"
SPAN_HOOK = "hook"
SPAN_SCRIPT = "script"
SPAN_NODE_EVENT = "node_event"
SPAN_JOURNAL = "journal"  # eviction and damage reports

# Hook span.
A_CONTEXT = "slurm.hook.context"
A_LAYOUT = "hookscope.layout"
A_HOOK_ID = "hookscope.hook.id"
A_HOOK_STATUS = "process.exit.code"  # same key on script spans: semconv
A_N_SCRIPTS = "hookscope.hook.scripts"
A_JOB_ID = "slurm.job.id"
A_JOB_USER = "slurm.job.user"
A_JOB_UID = "slurm.job.uid"
A_JOB_PARTITION = "slurm.job.partition"
A_JOB_NODELIST = "slurm.job.nodelist"
A_JOB_ACCOUNT = "slurm.job.account"
A_JOB_NAME = "slurm.job.name"
A_JOB_ARRAY_JOB_ID = "slurm.job.array.job_id"
A_JOB_ARRAY_TASK_ID = "slurm.job.array.task_id"
A_JOB_RESTART_COUNT = "slurm.job.restart_count"
A_JOB_STEP_ID = "slurm.step.id"
A_JOB_GPUS = "slurm.job.gpus"
A_CUDA_VISIBLE = "hookscope.gpu.cuda_visible_devices"
A_ROCR_VISIBLE = "hookscope.gpu.rocr_visible_devices"
#: job metadata key -> span attribute
JOB_ATTRS = {
    "job_id": A_JOB_ID,
    "user": A_JOB_USER,
    "uid": A_JOB_UID,
    "partition": A_JOB_PARTITION,
    "nodelist": A_JOB_NODELIST,
    "account": A_JOB_ACCOUNT,
    "job_name": A_JOB_NAME,
    "array_job_id": A_JOB_ARRAY_JOB_ID,
    "array_task_id": A_JOB_ARRAY_TASK_ID,
    "restart_count": A_JOB_RESTART_COUNT,
    "step_id": A_JOB_STEP_ID,
    "gpus": A_JOB_GPUS,
    "cuda_visible_devices": A_CUDA_VISIBLE,
    "rocr_visible_devices": A_ROCR_VISIBLE,
}

# Script span.
A_EXE_PATH = "process.executable.path"
A_EXIT_CODE = "process.exit.code"
A_SCRIPT_SHA256 = "hookscope.script.sha256"
A_SCRIPT_SIZE = "hookscope.script.size"
A_SCRIPT_MODE = "hookscope.script.mode"
A_SCRIPT_UID = "hookscope.script.uid"
A_SCRIPT_MTIME = "hookscope.script.mtime"
A_SCRIPT_INDEX = "hookscope.script.index"
A_SIGNAL = "hookscope.script.signal"
A_TIMED_OUT = "hookscope.script.timed_out"
A_REFUSED = "hookscope.script.refused"
A_KILLED = "hookscope.script.runner_killed"  # the runner died while it ran
A_EXPORTED = "hookscope.task.exported"

#: The raw journal records (canonical JSON lines, joined by "\n") that built
#: this span.  They carry the per-node hash chain into the store, and they are
#: what the collector loads: the other attributes are for OTel viewers.
A_RECORDS = "hookscope.journal.records"

# Span event names.
E_OUTPUT = "hookscope.output"
E_TIMEOUT = "hookscope.timeout"
E_SIGNAL = "hookscope.signal"
E_REFUSED = "hookscope.refused"
E_KILLED = "hookscope.runner_killed"
E_EVICTED = "hookscope.spool.evicted"
E_JOURNAL_DAMAGED = "hookscope.journal.damaged"
E_GPU_SNAPSHOT = "hookscope.gpu.snapshot"
EA_OUTPUT_TEXT = "hookscope.output.text"
EA_OUTPUT_TRUNCATED = "hookscope.output.truncated"

# GPU metrics (OTLP gauges; semantic conventions hw.* where they exist).
M_GPU_UTILIZATION = "hw.gpu.utilization"  # ratio 0..1
M_GPU_MEMORY_USAGE = "hw.gpu.memory.usage"  # bytes
M_GPU_MEMORY_LIMIT = "hw.gpu.memory.limit"  # bytes
M_GPU_POWER = "hw.gpu.power"  # watts
M_GPU_TEMPERATURE = "hw.gpu.temperature"  # celsius
M_GPU_CLOCK_SM = "hw.gpu.clock.sm"  # MHz
M_GPU_ECC_SBE = "hw.gpu.ecc.errors.corrected"  # count, volatile
M_GPU_ECC_DBE = "hw.gpu.ecc.errors.uncorrected"
M_GPU_XID = "hw.gpu.xid"  # last XID / RAS event code seen, 0 if none
M_GPU_RETIRED_PAGES = "hw.gpu.retired_pages"  # retired pages or remapped rows
M_GPU_THROTTLE = "hw.gpu.throttle_reasons"  # bitmask as reported by the driver
GPU_METRICS = (
    M_GPU_UTILIZATION, M_GPU_MEMORY_USAGE, M_GPU_MEMORY_LIMIT, M_GPU_POWER,
    M_GPU_TEMPERATURE, M_GPU_CLOCK_SM, M_GPU_ECC_SBE, M_GPU_ECC_DBE,
    M_GPU_XID, M_GPU_RETIRED_PAGES, M_GPU_THROTTLE,
)
# GPU data point attributes.
A_GPU_INDEX = "hw.gpu.index"
A_GPU_ID = "hw.id"  # UUID
A_GPU_MODEL = "hw.model"
A_GPU_VENDOR = "hw.vendor"
A_GPU_SOURCE = "hookscope.gpu.source"  # nvml | amdsmi | replay

# ---------------------------------------------------------------- NATS
SUBJECT_PREFIX = "hookscope"
SIGNAL_SPANS = "spans"
SIGNAL_METRICS = "metrics"
SUBJECT_DEADLETTER = "hookscope.deadletter"
STREAM_NAME = "HOOKSCOPE"
STREAM_SUBJECTS = ("hookscope.spans.>", "hookscope.metrics.>")
DLQ_STREAM_NAME = "HOOKSCOPE_DLQ"
DLQ_STREAM_SUBJECTS = ("hookscope.deadletter.>",)
DURABLE_CONSUMER = "hookscope-collector"
HDR_MSG_ID = "Nats-Msg-Id"
HDR_SCHEMA = "Hookscope-Schema"
HDR_CONTENT_TYPE = "Content-Type"
CONTENT_TYPE_TRACES = "application/x-protobuf; otlp=traces"
CONTENT_TYPE_METRICS = "application/x-protobuf; otlp=metrics"
#: Largest message we publish (NATS default max_payload is 1 MiB).
MAX_MESSAGE_BYTES = 1024 * 1024

#: Stream settings (documented in docs/contract.md).  Replicas is 1 on a single
#: server and 3 on a 3-node cluster; everything else is fixed.
STREAM_SETTINGS = {
    "storage": "file",
    "retention": "limits",
    "discard": "old",
    "duplicate_window_s": 2 * 3600,
    "max_age_s": 30 * 86400,
    "max_bytes": 20 * 1024**3,
    "max_msg_size": MAX_MESSAGE_BYTES,
}

_NAME_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


def subject_token(name):
    """A NATS subject token for a cluster or node name (no dots, no wildcards)."""
    return "".join(c if c in _NAME_SAFE else "_" for c in str(name)) or "_"


def subject(signal, cluster, node):
    """hookscope.<signal>.<cluster>.<node>, e.g. hookscope.spans.gpu1.node001."""
    return f"{SUBJECT_PREFIX}.{signal}.{subject_token(cluster)}.{subject_token(node)}"


def deadletter_subject(reason):
    return f"{SUBJECT_DEADLETTER}.{subject_token(reason)}"


# ---------------------------------------------------------------- pure helpers
def canonical_json(obj):
    """The byte form that is hashed and written: sorted keys, no spaces, UTF-8.

    Records hold no floats (times are integer ns), so the form is stable across
    Python versions and JSON libraries.
    """
    import json

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(record):
    """sha256 hex of the canonical JSON of ``record`` without its ``hash`` field."""
    import hashlib

    body = {k: v for k, v in record.items() if k != R_HASH}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def trace_id(cluster, job_id, restart_count=0):
    """One trace per job: 32 hex chars from cluster + job ID + restart count.

    Deterministic, so the controller and every node of a job land in one trace.
    Hooks with no job (job_id None) get a trace of their own via hook_trace_id.
    """
    import hashlib

    key = f"{cluster}:{job_id}:{int(restart_count or 0)}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def script_span_id(hook_id, index):
    """Span ID (16 hex) of the index-th script of a hook; hook_id is the hook's span ID."""
    import hashlib

    return hashlib.sha256(f"{hook_id}:{index}".encode("ascii")).hexdigest()[:16]


def message_id(cluster, node, signal, key):
    """Nats-Msg-Id: stable across retries so JetStream drops the duplicates."""
    return f"{subject_token(cluster)}.{subject_token(node)}.{signal}.{key}"


def inbox_prefix(node):
    """Reply-inbox prefix of a node's NATS connection (nats-py ``inbox_prefix``).

    Per-node so the server can let node X receive only its own PubAcks
    (subscribe ``_INBOX_<node>.>``) and never the collector's deliveries on
    ``_INBOX.>``; see deploy/nats/gen_auth.py and docs/security.md.
    """
    return f"_INBOX_{subject_token(node)}"

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
    # Boot-time init scripts (INIT_CONTEXTS below): run by a platform's
    # node-start entrypoint through ``hookscope run --context init_worker``.
    "init_worker",
    "init_login",
)
#: Slurm's drain reason when a hook of this context fails (None: no drain).
DRAIN_REASON = {
    "prolog_slurmd": "Prolog error",
    "epilog_slurmd": "Epilog error",
}
#: Contexts Slurm never starts: a node's boot-time init scripts (Slinky's and
#: SUNK's worker/login images run them before slurmd/sackd accept work).
INIT_CONTEXTS = ("init_worker", "init_login")

#: What a failure of each context does, in Slurm's own words (Slurm's "Prolog
#: and Epilog Guide", slurm.conf(5) Prolog/SchedulerParameters, slurmd's
#: _launch_job_fail and slurmctld's prep_prolog_slurmctld_callback).
#: ``hook``: the slurm.conf parameter; ``node``: the node state Slurm sets;
#: ``batch``/``interactive``: what happens to a batch job and to an
#: interactive one (salloc, srun); ``batch_reason``: the Reason squeue and
#: scontrol show; ``nohold``: the batch outcome when SchedulerParameters has
#: nohold_on_prolog_fail; ``scope``: what is stopped (job, step, task, or
#: nothing: "logged" / "boot").  Documented in docs/queries.md.
CONSEQUENCE = {
    "prolog_slurmd": {"hook": "Prolog", "scope": "job", "node": "DRAIN",
                      "batch": "requeued held", "batch_reason": "launch failed requeued held",
                      "nohold": "requeued", "interactive": "cancelled"},
    "epilog_slurmd": {"hook": "Epilog", "scope": "logged", "node": "DRAIN",
                      "batch": None, "interactive": None},
    "prolog_slurmctld": {"hook": "PrologSlurmctld", "scope": "job", "node": None,
                         "batch": "requeued", "interactive": "cancelled",
                         "message": "PrologSlurmctld failed, job killed"},
    "epilog_slurmctld": {"hook": "EpilogSlurmctld", "scope": "logged", "node": None,
                         "batch": None, "interactive": None},
    "prolog_task": {"hook": "TaskProlog", "scope": "task", "node": None,
                    "batch": "task cancelled", "interactive": "task cancelled"},
    "epilog_task": {"hook": "TaskEpilog", "scope": "logged", "node": None,
                    "batch": None, "interactive": None},
    "prolog_srun": {"hook": "SrunProlog", "scope": "step", "node": None,
                    "batch": "step cancelled", "interactive": "step cancelled"},
    "epilog_srun": {"hook": "SrunEpilog", "scope": "logged", "node": None,
                    "batch": None, "interactive": None},
    "init_worker": {"hook": "worker init script", "scope": "boot", "node": None,
                    "batch": None, "interactive": None},
    "init_login": {"hook": "login init script", "scope": "boot", "node": None,
                   "batch": None, "interactive": None},
}

# ---------------------------------------------------------------- journal
#: One journal file per hook invocation, JSON lines, canonical JSON per line.
JOURNAL_DIR_DEFAULT = "/var/spool/hookscope/journal"
#: Per-owner spools of non-root hook runs: ``<journal_dir>.users/<uid>/``, a
#: sibling of the journal (root-owned sticky parent mode USER_SPOOLS_MODE, one
#: 0700 dir per uid; emitter/userspool.py, docs/journal.md "Per-owner spools").
USER_SPOOLS_SUFFIX = ".users"
USER_SPOOLS_MODE = 0o1733
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
#: script_ended: ns from the spawn until the script process itself exited
#: (duration_ns runs until its output pipe reached EOF, as slurmd waits); None
#: when it never exited on its own before the record (killed runner).
R_EXIT_NS = "exit_ns"
#: script_ended: processes the script left behind (docs/runner.md "Leftovers"):
#: a list of {LO_PID, LO_CMD, LO_HELD_NS, LO_FATE}.  Empty when none.
R_LEFTOVERS = "leftovers"
LO_PID = "pid"
LO_CMD = "cmd"  # /proc/PID/cmdline, NULs as spaces, at most 256 characters
#: ns it held the hook (the output pipe) after the script exited; None when it
#: held no hook (it only stayed in the script's process group, or run-parts
#: style, where the next script starts without waiting for it)
LO_HELD_NS = "held_ns"
#: "exited" (before the pipe's EOF), "killed" (by the end-of-script SIGTERM/
#: SIGKILL of the script's group, as slurmd does), "running" (still alive and
#: outside the group: setsid'd, or a run-parts daemon)
LO_FATE = "fate"
LO_FATES = ("exited", "killed", "running")
#: script_ended and hook_ended: the signal (SIGTERM from slurmd's own timeout)
#: that terminated the runner while this script ran, or None.  A script with it
#: set was killed by the runner's termination, not by a failure of its own.
R_RUNNER_SIGNAL = "runner_signal"
R_UNSET = "unset"
# hook_ended
R_N_SCRIPTS = "n_scripts"
R_FAILED_INDEX = "failed_index"  # index of the script that decided the failure, or None
R_STATUS = "status"  # the exit status the runner returned to Slurm
R_WARNINGS = "warnings"  # list of strings (journal trouble, empty dir, ...)
#: A permission finding (a file or directory root runs or reads that another
#: user owns or can write; runner.strict "auto"/"record") is a hook_started
#: warning that starts with this prefix, one per file or directory, naming the
#: path and the bit: "finding: script /etc/slurm/prolog.d/x is writable by
#: group (mode 0775, bit g+w)".  The hook still ran it, as slurmd would.
FINDING_PREFIX = "finding: "
#: script_started: the findings of that script alone (list of strings, without
#: the prefix); absent when there are none.
R_FINDINGS = "findings"
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
#: Resource attribute the agent sets on every span message: the uid that
#: owns the spool the records came from (stat()ed by the agent, never read
#: from the payload); 0 for root's journal.
A_ATTESTED_UID = "hookscope.attested_uid"

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


# ---------------------------------------------------------------- GPU metrics, NATS
# Two parts of the contract have modules of their own: emitter.contract_gpu
# (GPU metric names, units, the names readers still accept) and
# emitter.contract_nats (subjects, stream settings, headers, message IDs).
# Their names are read through this module all the same (``contract.X``,
# ``from emitter.contract import X``), loaded on first use: the hook's hot
# path imports this module and needs neither.
def _load_parts():
    from emitter import contract_gpu, contract_nats

    for part in (contract_gpu, contract_nats):
        globals().update((k, v) for k, v in vars(part).items() if not k.startswith("_"))


def __getattr__(name):
    if not name.startswith("__"):
        _load_parts()
        if name in globals():
            return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    _load_parts()
    return sorted(globals())


# ---------------------------------------------------------------- pure helpers
def canonical_json(obj):
    """The byte form that is hashed and written: sorted keys, no spaces, UTF-8.

    Records hold no floats (times are integer ns), so the form is stable across
    Python versions and JSON libraries.
    """
    import json

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


#: {field path: sha256 hex of the field's UTF-8 value}, written by the journal
#: (``journal.seal``) for every string longer than DIGEST_MIN_CHARS at the top
#: level of a record ("output", "path") or in its job ("job.nodelist").  The
#: record hash covers these digests instead of the values, so a value cut in
#: transit to fit a message keeps the record verifiable (docs/journal.md).
R_DIGESTS = "digests"
#: {field path: the value's original length in characters}: set in transit
#: (``otlp``) on a value it cut (output keeps its tail, others their head);
#: outside the hash, and only a path listed in R_DIGESTS may be cut.
R_CUT = "cut"
DIGEST_MIN_CHARS = 256


def digest_form(body):
    """``body`` with each R_DIGESTS path's value replaced by "sha256:<digest>"
    (a copy; ``body`` itself when it has no digests).  Pure, no hashing."""
    dg = body.get(R_DIGESTS)
    if not dg or type(dg) is not dict:
        return body
    out = dict(body)
    for path, hexd in dg.items():
        top, _, sub = str(path).partition(".")
        if not sub:
            if top in out:
                out[top] = "sha256:" + str(hexd)
        elif type(out.get(top)) is dict and sub in out[top]:
            if out[top] is body.get(top):
                out[top] = dict(out[top])
            out[top][sub] = "sha256:" + str(hexd)
    return out


def record_hash(record):
    """sha256 hex of the canonical JSON of ``record`` without its ``hash``
    (and transit ``cut``) field, long values replaced by their R_DIGESTS.
    A record without R_DIGESTS (every record before they existed) hashes as
    it always did."""
    import hashlib

    body = {k: v for k, v in record.items() if k != R_HASH and k != R_CUT}
    return hashlib.sha256(canonical_json(digest_form(body)).encode("utf-8")).hexdigest()


def digest_problems(record):
    """[(path, problem)] for R_DIGESTS values that are not what the digest
    covers: "cut" (shortened in transit: only the digest is verifiable) or
    "altered" (full length but another text).  Empty when all match."""
    import hashlib

    dg = record.get(R_DIGESTS)
    if not dg or type(dg) is not dict:
        return []
    cut = record.get(R_CUT) if type(record.get(R_CUT)) is dict else {}
    out = []
    for path, hexd in dg.items():
        top, _, sub = str(path).partition(".")
        v = record.get(top)
        if sub:
            v = v.get(sub) if type(v) is dict else None
        if path in cut:
            out.append((path, "cut"))
        elif type(v) is not str or hashlib.sha256(v.encode("utf-8", "surrogatepass")).hexdigest() != hexd:
            out.append((path, "altered"))
    return out


def chain_head_payload(cluster, node, chain, seq, hash_, ts_ns):
    """The bytes a node signs (ed25519, its NKey) for one chain head: the
    canonical JSON of {cluster, node, chain, seq, hash, ts}; ``ts`` in integer
    ns, a whole number of microseconds (the store keeps microseconds)."""
    return canonical_json({"cluster": cluster, "node": node, "chain": chain, "seq": int(seq),
                           "hash": hash_, "ts": int(ts_ns)}).encode("utf-8")


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


def records_digest(texts):
    """sha256 hex of a message's journal lines: the A_RECORDS value of every
    span, in message order, joined by "\n" (the spans' Nats-Msg-Id key; the
    collector recomputes it)."""
    import hashlib

    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()

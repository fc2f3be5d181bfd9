"""The NATS part of the wire contract (read as ``emitter.contract.X``).

Subjects, stream names and settings, headers, content types, message size,
``Nats-Msg-Id`` and inbox prefixes.  Documented in docs/contract.md; see
emitter/contract.py for the rest of the contract.
"""

SUBJECT_PREFIX = "hookscope"
SIGNAL_SPANS = "spans"
SIGNAL_METRICS = "metrics"
SUBJECT_DEADLETTER = "hookscope.deadletter"
STREAM_NAME = "HOOKSCOPE"
STREAM_SUBJECTS = ("hookscope.spans.>", "hookscope.metrics.>")
#: Signed chain heads (emitter.chainheads): JSON, not OTLP, in the same stream
#: (natsio.ensure_streams adds the subject; OTLP consumers read STREAM_SUBJECTS).
SIGNAL_HEADS = "heads"
HEADS_SUBJECTS = ("hookscope.heads.>",)
DLQ_STREAM_NAME = "HOOKSCOPE_DLQ"
DLQ_STREAM_SUBJECTS = ("hookscope.deadletter.>",)
DURABLE_CONSUMER = "hookscope-collector"
HDR_MSG_ID = "Nats-Msg-Id"
HDR_SCHEMA = "Hookscope-Schema"
HDR_CONTENT_TYPE = "Content-Type"
CONTENT_TYPE_TRACES = "application/x-protobuf; otlp=traces"
CONTENT_TYPE_METRICS = "application/x-protobuf; otlp=metrics"
CONTENT_TYPE_HEADS = "application/json; hookscope=heads"
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


def message_id(cluster, node, signal, key):
    """Nats-Msg-Id: stable across retries so JetStream drops the duplicates.

    ``key`` is a content digest (``records_digest`` for spans, the sha256 of
    the payload for metrics), so a duplicate is the same node's same content:
    another node can neither predict the ID nor use it without the collector
    dead-lettering its message (``identity_mismatch``, docs/security.md)."""
    return f"{subject_token(cluster)}.{subject_token(node)}.{signal}.{key}"


def inbox_prefix(node):
    """Reply-inbox prefix of a node's NATS connection (nats-py ``inbox_prefix``).

    Per-node so the server can let node X receive only its own PubAcks
    (subscribe ``_INBOX_<node>.>``) and never the collector's deliveries on
    ``_INBOX.>``; see deploy/nats/gen_auth.py and docs/security.md.
    """
    return f"_INBOX_{subject_token(node)}"

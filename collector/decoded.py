"""What decoding one message gives: its rows (``Decoded``) or the reason it
is dead-lettered (``DeadLetter`` and the ``DL_*`` reasons).

A module of its own so that collector.decode, collector.heads and
collector.identity all import these from here, not from each other
(collector.decode re-exports them).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Dead-letter reasons (also the last token of the dead-letter subject).
DL_MALFORMED = "malformed"              # not a protobuf of the expected message type
DL_NOT_OURS = "not_ours"                # valid OTLP, but not from hookscope
DL_MISSING = "missing_attributes"       # ours, but records/attributes are missing
DL_BAD_RECORD = "bad_record"            # a record is not valid JSON / has wrong field types
DL_OVERSIZED = "oversized"              # larger than the configured limit
DL_BAD_TIMESTAMP = "bad_timestamp"      # before 2000-01-01 or more than a day in the future
DL_TOO_NEW = "schema_too_new"           # written by a newer hookscope: never guessed at
DL_BAD_IDS = "inconsistent_ids"         # span ID does not match the records' hook/script
DL_BAD_SUBJECT = "unknown_subject"      # not hookscope.spans.* / hookscope.metrics.*
DL_STORE_REJECTED = "store_rejected"    # the store refused the rows (type/constraint)
DL_IDENTITY = "identity_mismatch"       # rows or Msg-Id claim another node than the subject
DL_REASONS = (DL_MALFORMED, DL_NOT_OURS, DL_MISSING, DL_BAD_RECORD, DL_OVERSIZED,
              DL_BAD_TIMESTAMP, DL_TOO_NEW, DL_BAD_IDS, DL_BAD_SUBJECT, DL_STORE_REJECTED,
              DL_IDENTITY)


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    detail: str


@dataclass
class Decoded:
    """Rows of one message, per table, as tuples in schema column order."""
    rows: dict = field(default_factory=dict)
    n_spans: int = 0
    cluster: str | None = None
    schema_version: int | None = None
    max_end_ns: int | None = None  # latest hook end seen (for skew metrics)
    #: contract.records_digest of the message's journal lines (spans only):
    #: what a content-keyed Nats-Msg-Id must name (collector.identity)
    records_digest: str | None = None
    n_journal_errors: int = 0  # journal_error records: something stayed behind or broke on a node

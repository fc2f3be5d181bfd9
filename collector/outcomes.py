"""What the collector loop sends back to NATS for a batch that did not
simply commit (collector/consumer.py): its dead letters, published to the
dead-letter stream with why in the headers, and naks for a batch that was
not stored."""

from __future__ import annotations

import logging

from collector.fetched import parse_reply
from emitter import contract as C

log = logging.getLogger("hookscope.collector")

HDR_REASON = "Hookscope-Deadletter-Reason"
HDR_DETAIL = "Hookscope-Deadletter-Detail"
HDR_ORIG_SUBJECT = "Hookscope-Original-Subject"
HDR_ORIG_SEQ = "Hookscope-Original-Seq"


async def nak_all(batch, msgs, exc, metrics):
    """Nothing committed: ack nothing.  Nak so JetStream redelivers in a
    second rather than after ack_wait (disk full, store locked...)."""
    log.error("batch %s-%s not stored (%s); it will be redelivered", batch.first_seq, batch.last_seq, exc)
    metrics.inc("store_errors")
    for m in msgs:
        try:
            await m.nak(delay=1.0)
        except Exception:
            pass


async def publish_dead(js, batch, msgs, timeout, metrics):
    """Each dead letter of a committed batch to ``contract.deadletter_subject(reason)``."""
    by_seq = {}
    for m in msgs:
        by_seq[parse_reply(m.reply)[0]] = m
    for reason, subj, seq in batch.dead:
        detail = ""
        for tables in batch.parts.values():
            for row in tables.get("dead_letters", ()):
                if row[0] == seq:
                    detail = row[3]
        m = by_seq.get(seq)
        hdrs = {C.HDR_MSG_ID: f"deadletter.{seq}", HDR_REASON: reason,
                HDR_DETAIL: detail.replace("\r", " ").replace("\n", " ")[:400],
                HDR_ORIG_SUBJECT: subj, HDR_ORIG_SEQ: str(seq)}
        try:
            await js.publish(C.deadletter_subject(reason), m.data if m else b"", headers=hdrs, timeout=timeout)
        except Exception as exc:
            # Stored in dead_letters already; the DLQ stream copy is best effort
            # (e.g. the payload is over the server's limit).
            log.warning("dead letter %s (%s) not published to %s: %s", seq, reason,
                        C.deadletter_subject(reason), exc)
            metrics.inc("deadletter_publish_errors")

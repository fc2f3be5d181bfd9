"""One trace request -> the messages that carry it, and their Nats-Msg-Id keys.

Pure.  A hook's spans travel together when they fit one message; a hook too
large is split (hook span first, then its script spans packed in order).
The key of a message is the sha256 of the journal lines it carries
(``contract.records_digest``): only the same node re-sending the same records
is a duplicate, and the collector recomputes it (collector/identity.py).
Re-exported by :mod:`emitter.otlp`.
"""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from emitter import contract as c
from emitter.otlp_values import attributes_dict

#: Room left for the NATS headers and protocol line within MAX_MESSAGE_BYTES.
HEADER_ROOM = 4096
#: Room for the resource and scope around the spans of one message.
_ENVELOPE = 1024


def _attributes_dict(kvs) -> dict:
    return attributes_dict(kvs)


def journal_lines(req: ExportTraceServiceRequest) -> list[str]:
    """Every raw journal line carried by a trace request (span order)."""
    lines = []
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                for kv in span.attributes:
                    if kv.key == c.A_RECORDS and kv.value.string_value:
                        lines.extend(kv.value.string_value.split("\n"))
    return lines


# ---------------------------------------------------------------- messages
def message_key(req: ExportTraceServiceRequest) -> str:
    """The Nats-Msg-Id key of a one-message request (see split_requests): the
    hook span's ID (= the hook ID), or a standalone span's own ID."""
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                return (sp.parent_span_id or sp.span_id).hex()
    return "empty"


def records_key(req: ExportTraceServiceRequest) -> str:
    """The Nats-Msg-Id key of a one-message request: ``contract.records_digest``
    of its journal lines.  Content-derived, so only the same node re-sending
    the same records is a duplicate (the collector recomputes it)."""
    return c.records_digest(_records_texts(req))


def _records_texts(req) -> list[str]:
    texts = []
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for sp in ss.spans:
                for kv in sp.attributes:
                    if kv.key == c.A_RECORDS and kv.value.string_value:
                        texts.append(kv.value.string_value)
                        break
    return texts


def split_requests(req: ExportTraceServiceRequest, max_bytes: int = c.MAX_MESSAGE_BYTES) -> list:
    """One request per message: a hook span with its script spans, or one
    standalone span.  Returns [(key, request)], key = records_key.  The
    agent's exporter and direct mode both publish through this, so a record
    always travels under the same Nats-Msg-Id whoever sends it.

    A hook whose spans together exceed ``max_bytes`` (less HEADER_ROOM) is
    split across several messages: the hook span first, then its script
    spans packed in order; script spans travelling without their hook span
    carry its context, job ID and user (attributes) for the collector's rows."""
    groups: dict = {}
    order = []
    for ri, rs in enumerate(req.resource_spans):
        for si, ss in enumerate(rs.scope_spans):
            for sp in ss.spans:
                k = (ri, si, (sp.parent_span_id or sp.span_id))
                if k not in groups:
                    groups[k] = []
                    order.append(k)
                groups[k].append(sp)
    limit = max_bytes - HEADER_ROOM
    if len(order) == 1 and req.ByteSize() <= limit:
        return [(records_key(req), req)]
    out = []
    for k in order:
        ri, si, key = k
        for chunk in _pack(groups[k], limit - _ENVELOPE):
            part = ExportTraceServiceRequest()
            rs = part.resource_spans.add()
            rs.resource.CopyFrom(req.resource_spans[ri].resource)
            ss = rs.scope_spans.add()
            ss.scope.CopyFrom(req.resource_spans[ri].scope_spans[si].scope)
            ss.spans.extend(chunk)
            out.append((records_key(part), part))
    return out


#: hook span attributes a script span carries when it travels without it
_CTX_ATTRS = (c.A_CONTEXT, c.A_JOB_ID, c.A_JOB_USER)


def _pack(spans, limit: int) -> list:
    """Spans of one hook -> lists whose serialised spans fit ``limit`` (in order)."""
    sizes = [sp.ByteSize() + 8 for sp in spans]
    if sum(sizes) <= limit:
        return [spans]
    hook = next((sp for sp in spans if not sp.parent_span_id), None)
    ctx = [kv for kv in hook.attributes if kv.key in _CTX_ATTRS] if hook is not None else []
    chunks, cur, size = [], [], 0
    for sp, n in zip(spans, sizes):
        if cur and size + n > limit:
            chunks.append(cur)
            cur, size = [], 0
        if sp.parent_span_id and ctx and (not cur or cur[0].parent_span_id):
            copy = Span()
            copy.CopyFrom(sp)  # never alter the caller's request
            copy.attributes.extend(ctx)
            sp, n = copy, n + sum(kv.ByteSize() + 2 for kv in ctx)
        cur.append(sp)
        size += n
    if cur:
        chunks.append(cur)
    return chunks


def resource_of(req) -> tuple[str, str]:
    """(cluster, node) from the first resource of a trace or metrics request."""
    groups = getattr(req, "resource_spans", None) or getattr(req, "resource_metrics", None) or []
    for g in groups:
        a = _attributes_dict(g.resource.attributes)
        return str(a.get(c.A_CLUSTER) or ""), str(a.get(c.A_HOST_NAME) or "")
    return "", ""

"""PURE helpers shared by the span and metrics decoders (collector.decode,
collector.decode_spans): the dead-letter exception, record upgrades, OTLP
attribute access and the resource checks.  No I/O.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError

from collector.decoded import DL_BAD_RECORD, DL_MALFORMED, DL_NOT_OURS, DL_TOO_NEW
from emitter import contract as C

#: Earliest believable node timestamp (2000-01-01T00:00:00Z).
MIN_TS_NS = 946_684_800 * 10**9
#: How far ahead of the stream's receive time a node clock may be.
MAX_FUTURE_NS = 86_400 * 10**9


class _Bad(Exception):
    """Raised inside a decoder: the message becomes DeadLetter(reason, detail)."""

    def __init__(self, reason, detail):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _upgrade_v0(rec: dict) -> dict:
    """v0 (pre-release) records spelled the hook ID ``hook_id`` and stored
    ``ts`` in microseconds as ``ts_us``.  Kept as the template for real upgrades."""
    rec = dict(rec)
    if "hook_id" in rec and C.R_HOOK_ID not in rec:
        rec[C.R_HOOK_ID] = rec.pop("hook_id")
    if "ts_us" in rec and C.R_TS not in rec:
        rec[C.R_TS] = rec.pop("ts_us") * 1000
    rec[C.R_VERSION] = 1
    return rec


#: from-version -> function returning the record at from-version + 1.
UPGRADES = {0: _upgrade_v0}

#: ``chain`` of a record written before chain ids existed (same schema
#: version: the field was added, nothing changed meaning); such records are
#: stored with this chain so they keep the (cluster, node, chain, seq) key.
NO_CHAIN = ""


def upgrade_record(rec: dict) -> dict:
    """Bring an older record up to ``contract.SCHEMA_VERSION`` (hash untouched:
    the store keeps the original line, which is what was hashed)."""
    v = rec.get(C.R_VERSION)
    while v != C.SCHEMA_VERSION:
        if type(v) is not int:
            raise _Bad(DL_BAD_RECORD, f"record schema version {v!r} is not an integer")
        if v > C.SCHEMA_VERSION:
            raise _Bad(DL_TOO_NEW, f"record schema version {v} > supported {C.SCHEMA_VERSION}; "
                       "upgrade the collector")
        fn = UPGRADES.get(v)
        if fn is None:
            raise _Bad(DL_BAD_RECORD, f"no upgrade from record schema version {v}")
        rec = fn(rec)
        v = rec.get(C.R_VERSION)
    return rec


def _int_or_none(x):
    if x is None or type(x) is int:
        return x
    if type(x) is str:
        try:
            return int(x)
        except ValueError:
            return None
    return None


def _any_value(v):
    """OTLP AnyValue -> plain Python (for span event attributes, rare)."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return getattr(v, kind)


def _find_attr(attrs, key):
    """The value of attribute ``key``: the agent puts the records last, so look
    there (and first) before walking the list."""
    n = len(attrs)
    if n:
        kv = attrs[n - 1]
        if kv.key == key:
            return kv.value
        kv = attrs[0]
        if kv.key == key:
            return kv.value
        for kv in attrs:
            if kv.key == key:
                return kv.value
    return None


def _parse(cls, payload):
    req = cls()
    try:
        req.ParseFromString(payload)
    except DecodeError as exc:
        raise _Bad(DL_MALFORMED, f"not an OTLP {cls.__name__}: {exc}")
    return req


def _resource_attrs(resource, what):
    ra = {kv.key: kv.value for kv in resource.attributes}
    svc = ra.get(C.A_SERVICE_NAME)
    if svc is None or svc.string_value != C.SERVICE_NAME:
        raise _Bad(DL_NOT_OURS, f"{what}: resource {C.A_SERVICE_NAME} is not {C.SERVICE_NAME!r}")
    return ra


def _attested_uid(ra):
    """The uid the agent attests wrote a message's records (its spool's owner,
    docs/journal.md "Per-owner spools"); None when not marked (an older agent,
    direct mode): root's journal, as before per-owner spools existed."""
    v = ra.get(C.A_ATTESTED_UID)
    if v is None:
        return None
    if v.WhichOneof("value") != "int_value" or not 0 <= v.int_value < 2**32:
        raise _Bad(DL_BAD_RECORD, f"resource {C.A_ATTESTED_UID} is not a uid")
    return v.int_value

"""The record hash covers long values through their digest (docs/journal.md),
so a value cut in transit keeps the record verifiable.  Pure tests of
``journal.seal``, ``contract.record_hash`` and ``contract.digest_problems``."""

from __future__ import annotations

import json

from emitter import contract as c
from emitter import journal, otlp

LONG = "x" * (c.DIGEST_MIN_CHARS + 1)


def _sealed(**fields):
    rec = {c.R_VERSION: 1, c.R_KIND: c.K_SCRIPT_ENDED, c.R_HOOK_ID: "ab" * 8, c.R_TS: 1, **fields}
    line = journal.seal(rec)
    assert line == c.canonical_json(rec).encode() + b"\n"  # the line holds the full values
    return json.loads(line)


def test_short_records_hash_exactly_as_before():
    rec = _sealed(output="short")
    assert c.R_DIGESTS not in rec
    body = {k: v for k, v in rec.items() if k != c.R_HASH}
    import hashlib
    assert rec[c.R_HASH] == hashlib.sha256(c.canonical_json(body).encode()).hexdigest()


def test_long_values_are_hashed_through_their_digest():
    rec = _sealed(output="é" + LONG, job={"nodelist": LONG, "user": "alice"})
    assert set(rec[c.R_DIGESTS]) == {"output", "job.nodelist"}
    assert c.record_hash(rec) == rec[c.R_HASH] and c.digest_problems(rec) == []
    # the hashed form: each digested value replaced by "sha256:<digest>"
    form = c.digest_form({k: v for k, v in rec.items() if k != c.R_HASH})
    assert form[c.R_OUTPUT] == "sha256:" + rec[c.R_DIGESTS]["output"]
    assert form[c.R_JOB] == {"nodelist": "sha256:" + rec[c.R_DIGESTS]["job.nodelist"], "user": "alice"}


def test_altered_value_is_caught_and_cut_value_is_named_as_cut():
    rec = _sealed(output=LONG + "the real error")
    altered = dict(rec, output=LONG + "a forged error")
    assert c.record_hash(altered) == rec[c.R_HASH]  # the hash covers the digest ...
    assert c.digest_problems(altered) == [("output", "altered")]  # ... which the value must match
    raw, cut = otlp._cap_output(c.canonical_json(rec), rec, 64)
    assert cut[c.R_OUTPUT] == (LONG + "the real error")[-64:] and cut[c.R_CUT] == {"output": len(LONG) + 14}
    assert c.record_hash(json.loads(raw)) == rec[c.R_HASH]
    assert c.digest_problems(cut) == [("output", "cut")]
    # editing a digest breaks the hash
    forged = dict(rec, digests={"output": "0" * 64})
    assert c.record_hash(forged) != rec[c.R_HASH]


def test_old_records_without_digests_keep_the_old_cut_behaviour():
    rec = {c.R_VERSION: 1, c.R_KIND: c.K_SCRIPT_ENDED, c.R_HOOK_ID: "ab" * 8, c.R_OUTPUT: "y" * 600}
    rec[c.R_HASH] = c.record_hash(rec)
    _, cut = otlp._cap_output(c.canonical_json(rec), rec, 10)
    assert cut[c.R_OUTPUT_TRUNCATED] is True and c.record_hash(cut) != rec[c.R_HASH]

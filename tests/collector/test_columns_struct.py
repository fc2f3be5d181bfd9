"""``columns.to_arrow`` (one struct conversion per table) against the
column-wise reference ``to_arrow_columns``: for any rows, both give the same
table or both refuse, with the reference's error."""

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import columns as K
from tests.collector.gen import Node, hook_message
from collector import fetched as F
from tests.bench.collector_stages import _fake_msgs

_ERRORS = (pa.ArrowException, OverflowError, TypeError, ValueError)

#: values of every kind a payload could put in a row, right type or not
_ANY = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True), st.text(max_size=8), st.binary(max_size=8),
    st.lists(st.text(max_size=3), max_size=3), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


def _good(f: pa.Field):
    t = f.type
    if pa.types.is_timestamp(t) or pa.types.is_int64(t) or pa.types.is_uint64(t):
        return st.integers(min_value=0, max_value=2**62)
    if pa.types.is_int32(t):
        return st.integers(min_value=-2**31, max_value=2**31 - 1)
    if pa.types.is_floating(t):
        return st.floats(allow_nan=False)
    if pa.types.is_boolean(t):
        return st.booleans()
    if pa.types.is_binary(t):
        return st.binary(max_size=8)
    if pa.types.is_list(t):
        return st.lists(st.text(max_size=4), max_size=3)
    return st.text(max_size=8)


@st.composite
def _rows(draw):
    table = draw(st.sampled_from(sorted(K.ARROW_SCHEMAS)))
    sch = K.ARROW_SCHEMAS[table]
    bad = draw(st.floats(min_value=0, max_value=1))  # how often a value is drawn from anything
    n = draw(st.integers(min_value=1, max_value=4))
    rows = [tuple(draw(_ANY) if draw(st.floats(0, 1)) < bad else draw(st.none() | _good(f)) for f in sch)
            for _ in range(n)]
    return table, rows


def _outcome(fn, table, rows):
    try:
        return "ok", fn(table, rows)
    except _ERRORS as exc:
        return "refused", f"{type(exc).__name__}: {exc}"


@settings(max_examples=3000, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(_rows())
def test_struct_conversion_equals_column_wise(case):
    table, rows = case
    got, ref = _outcome(K.to_arrow, table, rows), _outcome(K.to_arrow_columns, table, rows)
    assert got[0] == ref[0]
    if got[0] == "ok":
        assert got[1].schema == ref[1].schema and got[1].equals(ref[1])
    else:
        assert got[1] == ref[1]  # the reference's error, word for word


def test_real_batches_convert_equally():
    node = Node()
    msgs = [hook_message(node, fail_index=i % 3 or None)[:3] for i in range(40)]
    batch, _ = F.build_batch(_fake_msgs([(s, mid, p) for s, mid, p in msgs]), "t", True, 10**8)
    n = 0
    for tables in batch.parts.values():
        for table, rows in tables.items():
            assert K.to_arrow(table, rows).equals(K.to_arrow_columns(table, rows))
            n += len(rows)
    assert n > 40 * 3


@pytest.mark.parametrize("table", sorted(K.ARROW_SCHEMAS))
def test_empty_rows_give_the_schema(table):
    assert K.to_arrow(table, []).schema == K.ARROW_SCHEMAS[table]

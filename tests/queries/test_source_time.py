"""The one ``parse_time`` (queries.source): pure tests over the union of the
inputs the CLI (``why --since``) and the dashboard (``?since=``) accepted when
each had its own rules.  The dashboard's own error type is tested in
tests/dashboard/test_render.py."""

from datetime import datetime, timedelta, timezone

import pytest

from queries.source import TimeSpecError, parse_time

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text,age", [
    ("30s", timedelta(seconds=30)),
    ("30m", timedelta(minutes=30)),
    ("30min", timedelta(minutes=30)),     # was a 400 in the dashboard
    ("30 min", timedelta(minutes=30)),
    ("30MIN", timedelta(minutes=30)),
    ("24h", timedelta(hours=24)),
    ("24H", timedelta(hours=24)),
    ("1.5h", timedelta(minutes=90)),      # was a 400 in the dashboard
    ("7d", timedelta(days=7)),
    ("2w", timedelta(weeks=2)),
    (" 7d ", timedelta(days=7)),
    ("0s", timedelta(0)),
])
def test_relative_ages_count_back_from_now(text, age):
    assert parse_time(text, now=NOW) == NOW - age


@pytest.mark.parametrize("text,expected", [
    ("now", NOW),
    ("NOW", NOW),
    ("2026-12-01", datetime(2026, 12, 1, tzinfo=timezone.utc)),
    ("2026-12-01T08:00", datetime(2026, 12, 1, 8, tzinfo=timezone.utc)),            # naive = UTC
    ("2026-12-01T08:00Z", datetime(2026, 12, 1, 8, tzinfo=timezone.utc)),
    ("2026-12-01T08:00z", datetime(2026, 12, 1, 8, tzinfo=timezone.utc)),
    ("2026-12-01T08:00:00.250Z", datetime(2026, 12, 1, 8, 0, 0, 250000, tzinfo=timezone.utc)),
    ("2026-12-01 08:00:00", datetime(2026, 12, 1, 8, tzinfo=timezone.utc)),
    ("2026-12-01T10:00+02:00", datetime(2026, 12, 1, 8, tzinfo=timezone.utc)),
])
def test_absolute_times(text, expected):
    got = parse_time(text, now=NOW)
    assert got == expected and got.tzinfo is not None


def test_none_empty_and_datetimes():
    assert parse_time(None) is None and parse_time("") is None
    naive = datetime(2026, 12, 1, 8)
    assert parse_time(naive) == naive.replace(tzinfo=timezone.utc)
    aware = datetime(2026, 12, 1, 8, tzinfo=timezone(timedelta(hours=2)))
    assert parse_time(aware) is aware


def test_now_defaults_to_the_clock():
    before = datetime.now(timezone.utc)
    got = parse_time("1h")
    assert before - timedelta(hours=1) <= got <= datetime.now(timezone.utc) - timedelta(hours=1)


@pytest.mark.parametrize("text", ["yesterday", "last tuesday", "1; DROP TABLE x", "-5m", "5 minutes",
                                  "5y", "h", "2026-13-01", "24 h ago"])
def test_refused_with_what_to_write(text):
    with pytest.raises(TimeSpecError, match=r"ISO-8601.*30m, 24h, 7d"):
        parse_time(text, now=NOW)

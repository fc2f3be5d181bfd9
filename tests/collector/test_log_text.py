"""The collector's log lines quote stored values (DuckDB errors name the row):
text from scripts is data, never control (issue 12)."""

import logging

from collector.consumer import log


def test_collector_log_lines_show_control_characters_as_escapes(caplog):
    with caplog.at_level(logging.WARNING, logger="hookscope.collector"):
        log.warning("batch refused by the store (%s)", "value \x1b]52;c;cm0gLXJmIC8=\x07 \x1b[2J\x9b31m")
    (rec,) = caplog.records
    msg = rec.getMessage()
    assert "\x1b" not in msg and "\x07" not in msg and "\x9b" not in msg
    assert "\\x1b]52;c;" in msg  # still readable, as data

"""Text from scripts is data, never control.

Pure tests of queries/safetext.py, then a fuzz: hostile strings (escape
sequences, C0/C1 controls, bidi overrides) written where scripts, users
and operators can put them (script output, path, refusal reason, user name,
node event reason) go through every text output: ``why``, ``drains``,
``why job``, ``audit`` (job, node, user, script, verify), their ``--json``, the CSV and
JSON exports and the HTML report; no control character may come out, and
the JSON forms must still hold the exact text.
"""

import csv
import io
import json
import os
import tempfile
from datetime import timedelta

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queries.safetext import csv_cell, is_visible, json_text, visible, visible_data

# ---------------------------------------------------------------- pure
ATTACKS = [
    "\x1b[2J\x1b[H",                      # clear screen, cursor home
    "\x1b]0;pwned\x07",                   # window title (OSC 0, BEL)
    "\x1b]52;c;cm0gLXJmIH4K\x1b\\",       # OSC 52: write the clipboard (ST)
    "\x1b[8mhidden\x1b[0m",               # hidden text
    "\x9b31m",                            # C1 CSI
    "\x9d8;;http://evil\x9c",             # C1 OSC hyperlink
    "ok\rFAIL",                           # overwrite the line
    "abc\x08\x08\x08xyz",                 # backspaces
    "\x1bP+q\x1b\\",                      # DCS
    "\u202egnp.exe",                      # bidi override
    "\x00\x7f\x85",                       # NUL, DEL, NEL
]


def _inert(text: str, keep="\n\t") -> None:
    """No C0 (but ``keep``), DEL, C1, bidi control or separator in ``text``."""
    bad = [hex(ord(c)) for c in text
           if (ord(c) < 0x20 and c not in keep) or 0x7f <= ord(c) <= 0x9f
           or c in "\u061c\u200e\u200f\u2028\u2029" or 0x202a <= ord(c) <= 0x202e or 0x2066 <= ord(c) <= 0x2069]
    assert not bad, f"control characters reached the output: {bad[:10]}"


@pytest.mark.parametrize("attack", ATTACKS)
def test_visible_escapes_every_control(attack):
    out = visible(attack)
    _inert(out, keep="")
    assert is_visible(out) and not is_visible(attack)
    assert visible(out) == out  # already visible text is left alone


def test_visible_shows_what_was_there():
    assert visible("a\x1b[2Jb") == "a\\x1b[2Jb"
    assert visible("\x9b1m") == "\\x9b1m"
    assert visible("\u202eabc") == "\\u202eabc"
    assert visible("l1\n\tl2\r") == "l1\\x0a\\x09l2\\x0d"
    assert visible("l1\n\tl2\r", keep_layout=True) == "l1\n\tl2\\x0d"
    assert visible(None) == "" and visible(42) == "42"
    assert visible("héllo – ✓ 日本") == "héllo – ✓ 日本"  # printable text is untouched
    assert visible("\ud800") == "\\ud800"


def test_json_text_is_lossless_and_inert():
    data = {"out": "".join(ATTACKS), "k\x1b": ["\x9b", "\u202e", "\ud83d"], "n": 1}
    text = json_text(data, indent=2)
    _inert(text)
    assert json.loads(text) == data
    assert "\\u001b" in text and "\\u009b" in text and "\\u202e" in text


def test_csv_cell():
    assert csv_cell("=HYPERLINK(\"http://x\")") == "'=HYPERLINK(\"http://x\")"
    for lead in "+-@":
        assert csv_cell(lead + "1") == "'" + lead + "1"
    assert csv_cell("a\nb\x1b") == "a\nb\\x1b"
    assert csv_cell(3) == 3 and csv_cell(None) is None


def test_visible_data():
    assert visible_data({"a\x1b": ["\x9b", 1, None]}) == {"a\\x1b": ["\\x9b", 1, None]}


# ---------------------------------------------------------------- the fuzz
_CTRL = st.characters(min_codepoint=0, max_codepoint=0x9f)
_PIECES = st.one_of(st.sampled_from(ATTACKS), st.text(_CTRL, min_size=1, max_size=6),
                    st.text(st.characters(blacklist_categories=("Cs",)), max_size=4))
HOSTILE = st.lists(_PIECES, min_size=1, max_size=6).map("".join)


def _store(tmp, output, path, reason, user, event):
    from tests.queries.builder import T0, StoreBuilder, script

    b = StoreBuilder(cluster="c1")
    ok = script("/etc/slurm/prolog.d/10-ok.sh")
    b.hook("bad01", T0, "prolog_slurmd", 7001, user, [ok, script(path, exit_code=3, output=output)])
    b.hook("bad02", T0, "prolog_slurmd", 7002, user,
           [ok, script(path, exit_code=1, refused=reason, output=output)])
    b.node_event("bad01", T0 + timedelta(minutes=1), "DRAIN", event)
    return b.write_db(os.path.join(tmp, "s.duckdb"))


def _run(cmd, args, code=None, stdout=False):
    """stdout and stderr as the terminal gets them (``color``: click strips nothing)."""
    res = CliRunner().invoke(cmd, args, catch_exceptions=False, color=True)
    if code is not None:
        assert res.exit_code == code, res.output
    return res.stdout if stdout else res.output


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(output=HOSTILE, path=HOSTILE, reason=HOSTILE, user=HOSTILE, event=HOSTILE)
def test_fuzz_every_cli_output_is_inert(output, path, reason, user, event):
    from queries.cli import audit, drains, why

    path = "/etc/slurm/prolog.d/" + path
    with tempfile.TemporaryDirectory() as tmp:
        db = _store(tmp, output, path, reason, user, event)
        texts = [
            _run(why, ["bad01", "--db", db]), _run(why, ["bad02", "--db", db]),
            _run(why, ["job", "7001", "--db", db]), _run(why, ["job", "7002", "--db", db, "--json"]),
            _run(drains, ["--db", db]),
            _run(audit, ["job", "7001", "--db", db]), _run(audit, ["node", "bad02", "--db", db]),
            _run(audit, ["user", user, "--db", db]), _run(audit, ["script", path, "--db", db]),
            _run(audit, ["verify", "--db", db]),
        ]
        for text in texts:
            _inert(text)
        # JSON on stdout: inert and lossless.
        raw = _run(why, ["bad01", "--db", db, "--json"], stdout=True)
        _inert(raw)
        assert json.loads(raw)["cause"]["output"] == output
        raw = _run(audit, ["node", "bad01", "--db", db, "--json"], stdout=True)
        _inert(raw)
        rows = json.loads(raw)
        assert {r["output"] for r in rows if r["exit_code"] == 3} == {output}
        assert {r["script"] for r in rows if r["exit_code"] == 3} == {path}
        # Exports.
        for fmt in ("csv", "json"):
            out = os.path.join(tmp, f"x.{fmt}")
            _run(audit, ["node", "bad01", "--db", db, "--format", fmt, "-o", out], code=0)
            raw = open(out, "rb").read().decode("utf-8")
            _inert(raw, keep="\n\t\r" if fmt == "csv" else "\n")  # csv ends rows with \r\n
            if fmt == "json":
                assert [r["output"] for r in json.loads(raw) if r["exit_code"] == 3] == [output]
            else:
                cells = [r["output"] for r in csv.DictReader(io.StringIO(raw, newline=""))]
                assert all(c == "" or is_visible(c, keep_layout=True) for c in cells)


def test_csv_export_keeps_row_structure_and_quotes_formulas(tmp_path):
    from queries.export import export

    out = export([{"output": "=cmd|' /C calc'!A0\r\nline2\x1b[2J", "n": -1}], "csv", tmp_path / "x.csv")
    rows = list(csv.DictReader(open(out, newline="", encoding="utf-8")))
    assert rows == [{"output": "'=cmd|' /C calc'!A0\\x0d\nline2\\x1b[2J", "n": "-1"}]


def test_report_escapes_markup_and_controls(tmp_path):
    # The HTML report: markup escaped (no tag of a script's making reaches the
    # page), and the embedded JSON data block cannot be closed early.
    from dashboards.data import open_store
    from dashboards.report import render_report

    from html.parser import HTMLParser

    db = _store(str(tmp_path), "<script>alert(1)</script></pre>\x1b[2J", "/etc/slurm/prolog.d/<img src=x>.sh",
                "</script><marquee>r</marquee>", "<u>eve</u>", "x\"><svg onload=alert(1)>")
    con = open_store(db=db)
    try:
        html, _ = render_report("node", con, "bad01")
    finally:
        con.close()

    class Tags(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tags, self.attrs, self.scripts = [], [], []

        def handle_starttag(self, tag, attrs):
            self.tags.append(tag)
            self.attrs += [k for k, _ in attrs]

        def handle_data(self, data):
            if self.tags and self.tags[-1] == "script":
                self.scripts.append(data)

    p = Tags()
    p.feed(html)
    assert not {"img", "svg", "u", "marquee"} & set(p.tags), set(p.tags)
    assert not [a for a in p.attrs if a.startswith("on")]
    # The page-data JSON block holds the text, with < > & escaped: it can never end early.
    assert not [s for s in p.scripts if "<script>alert" in s or "<svg" in s]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(output=HOSTILE, path=HOSTILE, reason=HOSTILE, user=HOSTILE, event=HOSTILE)
def test_fuzz_report_is_inert(output, path, reason, user, event):
    from dashboards.data import open_store
    from dashboards.report import render_report

    with tempfile.TemporaryDirectory() as tmp:
        db = _store(tmp, output, "/etc/slurm/prolog.d/" + path, reason, user, event)
        con = open_store(db=db)
        try:
            for kind, key in (("node", "bad01"), ("node", "bad02"), ("job", "7001")):
                html, _ = render_report(kind, con, key)
                _inert(html)
        finally:
            con.close()

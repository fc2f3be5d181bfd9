"""Text from scripts is data, never control: make it visible before it is shown.

Script output, paths, refusal reasons, node names and every other string in
the store were written by something we do not trust.  A terminal obeys the
C0 and C1 control characters it is sent (ESC starts CSI/OSC/DCS sequences:
clear the screen, hide text, set the window title, write the clipboard with
OSC 52; CR and BS overwrite what was printed), a spreadsheet obeys a cell
that starts with ``=``, and a bidi override reorders what the eye reads.

Pure functions, no I/O.  Each control character becomes a visible escape
(``\\x1b``, ``\\x9b``, ``\\u202e``), so the text is still readable and nothing
in it acts.  A backslash is left as it is: the human view is not meant to be
parsed back (JSON is the lossless form, and :func:`json_text` keeps every
character, escaping the dangerous ones as ``\\u001b``).
"""

from __future__ import annotations

import json
import re

#: C0 (except the two layout characters a caller may keep), DEL, C1, the
#: Unicode bidi embedding/override/isolate controls (they reorder what is
#: displayed, "Trojan Source"), line/paragraph separators and lone
#: surrogates (which cannot be encoded to a UTF-8 terminal at all).
_BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029"
_ALL = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}\ud800-\udfff]")
_KEEP_NL = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}\ud800-\udfff]")  # keeps \t and \n
#: What JSON leaves raw (it escapes C0 itself): DEL, C1, bidi, separators.
_JSON_RAW = re.compile(f"[\x7f-\x9f{_BIDI}]")
#: Cells a spreadsheet would run as a formula (OWASP "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _esc(m: re.Match) -> str:
    n = ord(m.group(0))
    return f"\\x{n:02x}" if n <= 0xFF else f"\\u{n:04x}"


def visible(text, *, keep_layout: bool = False) -> str:
    """``text`` with every control character shown as an escape (``\\x1b``).

    ``keep_layout``: keep ``\\n`` and ``\\t`` (a multi-line output block);
    otherwise they are escaped too (a table cell, a one-line field).
    """
    if text is None:
        return ""
    s = text if isinstance(text, str) else str(text)
    return (_KEEP_NL if keep_layout else _ALL).sub(_esc, s)


def is_visible(text: str, *, keep_layout: bool = False) -> bool:
    """True when ``text`` holds no character that :func:`visible` would escape."""
    return (_KEEP_NL if keep_layout else _ALL).search(text) is None


def json_text(data, **kw) -> str:
    """``json.dumps`` that stays lossless and never emits a raw control.

    JSON escapes C0 itself; DEL, C1 and the bidi controls are valid raw in a
    JSON string, so they are written as ``\\u009b`` escapes too (the parsed
    value is unchanged).  Other non-ASCII text stays readable UTF-8.
    """
    kw.setdefault("ensure_ascii", False)
    out = json.dumps(data, **kw)
    if kw["ensure_ascii"]:
        return out
    # Lone surrogates cannot be written as UTF-8: escape them the same way.
    out = re.sub("[\ud800-\udfff]", lambda m: f"\\u{ord(m.group(0)):04x}", out)
    return _JSON_RAW.sub(lambda m: f"\\u{ord(m.group(0)):04x}", out)


def csv_cell(value):
    """A CSV cell: strings made visible (newlines kept: CSV quotes them) and
    prefixed with ``'`` when a spreadsheet would take them for a formula.
    Other values are returned unchanged."""
    if not isinstance(value, str):
        return value
    if value.startswith(_FORMULA_START):
        value = "'" + value
    return visible(value, keep_layout=True)


def visible_data(data):
    """``data`` (lists/dicts/scalars) with every string made :func:`visible`."""
    if isinstance(data, str):
        return visible(data)
    if isinstance(data, dict):
        return {visible(k) if isinstance(k, str) else k: visible_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [visible_data(v) for v in data]
    return data

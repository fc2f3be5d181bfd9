"""Readable text tables for the CLI (the --json output is the data itself)."""

from __future__ import annotations

import json
import shutil

from queries.safetext import visible


def _cell(v, width: int) -> str:
    if v is None:
        s = "-"
    elif isinstance(v, bool):
        s = "yes" if v else "no"
    elif isinstance(v, float):
        s = f"{v:.1f}" if abs(v) >= 10 else f"{v:.3g}"
    elif isinstance(v, (list, dict)):
        s = ", ".join(map(str, v)) if isinstance(v, list) else json.dumps(v)
    else:
        s = str(v)
    # Controls made visible before measuring, so the columns still line up.
    s = visible(s.replace("\n", " "))
    return s if len(s) <= width else s[: max(1, width - 1)] + "…"


def render(rows: list[dict], columns: list[str] | None = None, *, max_width: int | None = None,
           widths: dict[str, int] | None = None) -> str:
    """A plain table: header, rule, one line per row; long cells end in '…'."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0].keys())
    limit = max_width or max(80, shutil.get_terminal_size((160, 24)).columns)
    widths = widths or {}
    cells = [[_cell(r.get(c), widths.get(c, 60)) for c in columns] for r in rows]
    w = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    out = ["  ".join(c.ljust(w[i]) for i, c in enumerate(columns)).rstrip(),
           "  ".join("-" * w[i] for i in range(len(columns)))]
    for row in cells:
        out.append("  ".join(v.ljust(w[i]) for i, v in enumerate(row)).rstrip())
    return "\n".join(line[:limit] for line in out)


def short_sha(s) -> str | None:
    return s[:12] if isinstance(s, str) else s


def kv(d: dict, keys: list[str] | None = None) -> str:
    """``key: value`` lines for one object."""
    keys = keys or list(d.keys())
    n = max(len(k) for k in keys)
    return "\n".join(f"{k.ljust(n)}  {_cell(d.get(k), 120)}" for k in keys)

"""HTML primitives of every page: ``Markup``, escaping (``esc``, ``render``),
links and small builders (tables, cards, charts).  dashboards.pages and
dashboards.outcome_pages both build on these, so neither imports the other
back.  Escaping is the default: ``render`` escapes every value unless it is
already ``Markup``.
"""

import json
import re
from urllib.parse import quote, urlencode

import markupsafe

from queries.safetext import visible


class Markup(str):
    """A string that is already safe HTML; concatenation escapes the other side."""

    def __add__(self, other):
        return Markup(str.__add__(self, esc(other)))

    def __radd__(self, other):
        return Markup(str.__add__(esc(other), self))


def esc(v):
    """HTML-escaped text, every control character (ESC, C1, bidi overrides...)
    made visible first: script output is data, never control (queries/safetext.py).
    Newlines and tabs stay, for <pre> output."""
    if isinstance(v, Markup):
        return v
    if v is None:
        return Markup("")
    return Markup(markupsafe.escape(visible(str(v), keep_layout=True)))  # & < > ' " as entities


def render(template, **kw):
    """``template.format`` with every argument escaped unless it is Markup."""
    return Markup(template.format(**{k: esc(v) for k, v in kw.items()}))


def join(parts, sep=""):
    return Markup(esc(sep).join(esc(p) for p in parts))


def json_block(obj, id_):
    """JSON inside HTML: '<', '>' and '&' escaped so no '</script>' can end the block."""
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    text = (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))
    return Markup(f'<script type="application/json" id="{esc(id_)}">{text}</script>')


# ---------------------------------------------------------------- links
def job_url(job_id):
    return f"/job/{quote(str(job_id), safe='')}"


def node_url(node):
    return f"/node/{quote(str(node), safe='')}"


def script_url(path):
    return "/script?" + urlencode({"path": path})


def link(url, text):
    return render('<a href="{u}">{t}</a>', u=url, t=text)


def short_sha(sha):
    return render('<code title="{s}">{t}</code>', s=sha or "", t=(sha or "")[:12])


def fmt_ms(v):
    if v is None:
        return ""
    return f"{v / 1000:.2f} s" if v >= 10000 else f"{v:.1f} ms"


_FRAC = re.compile(r"(\.\d{3})\d*(?=Z|[+-]\d\d:?\d\d$|$)")


def fmt_time(iso):
    """'2026-12-01T08:00:00.120000Z' -> '2026-12-01 08:00:00.120Z' (ms, UTC)."""
    s = _FRAC.sub(r"\1", str(iso or "")).replace("T", " ")
    return s.replace(".000Z", "Z").replace("+00:00", "Z")


def status_badge(failed, text=None):
    return render('<span class="badge {c}">{t}</span>', c="bad" if failed else "ok",
                  t=text or ("failed" if failed else "ok"))


def script_result(r):
    """'exit 1', 'timed out', 'refused: ...' as a badge."""
    if r.get("refused"):
        return status_badge(True, f"refused: {r['refused']}")
    if r.get("timed_out"):
        return status_badge(True, "timed out")
    if r.get("signal"):
        return status_badge(True, f"signal {r['signal']} (exit {r.get('exit_code')})")
    code = r.get("exit_code")
    if code is None:
        return status_badge(True, "no result") if r.get("runner_killed") else Markup("")
    return status_badge(code != 0, f"exit {code}")


def output_cell(text):
    if not text:
        return Markup("")
    return render('<details><summary>output</summary><pre class="output">{o}</pre></details>', o=text)


def table(headers, rows, cls="data", tid=None):
    """rows: lists of cells (escaped unless Markup)."""
    head = join(render("<th>{h}</th>", h=h) for h in headers)
    body = join(render("<tr>{c}</tr>", c=join(render("<td>{v}</td>", v=v) for v in row)) for row in rows)
    if not rows:
        body = render('<tr><td colspan="{n}" class="empty">nothing in this window</td></tr>', n=len(headers))
    return render('<table class="{c}"{i}><thead><tr>{h}</tr></thead><tbody>{b}</tbody></table>',
                  c=cls, i=Markup(f' id="{esc(tid)}"') if tid else Markup(""), h=head, b=body)


def bar(value, maximum, width=120, bad=False):
    """A tiny inline SVG bar: presentation attributes only, no style attribute (CSP)."""
    w = 0 if not maximum or value is None else max(1, round(width * min(value / maximum, 1.0)))
    return render('<svg class="minibar" width="{W}" height="10" aria-hidden="true">'
                  '<rect width="{W}" height="10" class="track"/><rect width="{w}" height="10" class="{c}"/></svg>',
                  W=width, w=w, c="fill bad" if bad else "fill")


def card(title, body, cid=None):
    return render('<section class="card"{i}><h2>{t}</h2>{b}</section>',
                  i=Markup(f' id="{esc(cid)}"') if cid else Markup(""), t=title, b=body)


def chart(cid, title, n_series, height=220):
    return render('<figure class="chart" id="{i}" data-chart="{i}" data-series="{n}" data-height="{h}">'
                  '<figcaption>{t}</figcaption></figure>', i=cid, n=n_series, h=height, t=title)


def stat(label, value, bad=False):
    return render('<div class="stat{c}"><div class="v">{v}</div><div class="l">{l}</div></div>',
                  c=" bad" if bad else "", v=value, l=label)

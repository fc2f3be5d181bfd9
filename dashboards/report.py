"""Self-contained HTML reports: the job or node page as one file an auditor can
attach to a ticket.  Chart library, stylesheet and chart script are inlined;
a CSP meta tag allows exactly those inline blocks (by sha256) and nothing
else, so the report stays inert even if opened from a mail client's cache.
The page's full data dict is embedded too (``<script type="application/json"
id="page-data">``), so the report is also the audit record itself.
"""

import base64
import hashlib
import os
import re
from datetime import datetime, timezone

from dashboards import DashboardError, data, pages
from dashboards.server import load_static
from emitter.fsutil import replacing

_LINK = re.compile(r'<a href="(/[^"]*)">(.*?)</a>', re.S)


def _sha(text):
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def report_assets(source):
    static = {k: v.decode("utf-8") for k, v in load_static().items()}
    css = static["uPlot.min.css"] + "\n" + static["dash.css"]
    # A '</' inside an inlined asset would end its element early.
    js_parts = [static["uPlot.iife.min.js"], static["dash.js"]]
    for part in js_parts + [css]:
        if "</script" in part.lower() or "</style" in part.lower():
            raise DashboardError("a vendored asset contains a closing tag and cannot be inlined")
    csp = ("default-src 'none'; img-src data:; base-uri 'none'; form-action 'none'; "
           f"style-src {_sha(css)}; script-src {' '.join(_sha(p) for p in js_parts)}")
    made = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    return {
        "report": True,
        "meta": pages.render('<meta http-equiv="Content-Security-Policy" content="{c}">\n', c=csp),
        "css": pages.Markup(f"<style>{css}</style>"),
        "js": pages.join(pages.Markup(f"<script>{p}</script>") for p in js_parts),
        "stamp": pages.render('<span class="muted">hookscope report · generated {m} from {s}</span>',
                              m=made, s=source),
    }


def _unlink(html, base_url):
    """Dashboard-relative links point nowhere in a file: absolute with
    ``base_url``, plain text without it."""
    if base_url:
        base = base_url.rstrip("/")
        return _LINK.sub(lambda m: f'<a href="{base}{m.group(1)}">{m.group(2)}</a>', html)
    return _LINK.sub(lambda m: f"<span>{m.group(2)}</span>", html)


def render_report(kind, con, key, source="the hookscope store", base_url=None, since=None, until=None):
    """(html, page data) for ``kind`` 'job' or 'node'."""
    if kind == "job":
        page, renderer = data.job(con, key), pages.job_page
    elif kind == "node":
        page, renderer = data.node(con, key, since=since, until=until), pages.node_page
    else:
        raise DashboardError(f"no report of kind {kind!r}: use 'job' or 'node'")
    assets = report_assets(source)
    assets["extra"] = pages.json_block(page, "page-data")
    html = renderer(page, assets)
    return _unlink(str(html), base_url), page


def write_report(kind, key, output, db=None, archive=None, base_url=None, since=None, until=None):
    """Write the report file atomically; return its path."""
    con = data.open_store(db=db, archive=archive)
    try:
        html, _ = render_report(kind, con, key, source=db or archive, base_url=base_url,
                                since=since, until=until)
    finally:
        con.close()
    out = os.path.abspath(output)
    def fail(exc):
        return DashboardError(f"cannot write the report to {output}: {exc.strerror or exc}")

    with replacing(out, fail) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(html)
    return out

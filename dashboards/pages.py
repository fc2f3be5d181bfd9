"""HTML for the dashboard pages, rendered from the page data dicts of data.py.

Escaping is the default: ``render`` escapes every value unless it is already
``Markup`` (produced by the builders of dashboards/html.py).  Chart data travels as a
``<script type="application/json">`` block that is never executed; the one
script that draws charts is a static file, so a strict CSP (no inline script)
holds for every page.
"""

from urllib.parse import urlencode

from dashboards.data import GPU_METRICS
from dashboards.html import (  # noqa: F401  (re-exported: callers use pages.X)
    Markup, bar, card, chart, esc, fmt_ms, fmt_time, job_url, join, json_block, link, node_url, output_cell,
    render, script_result, script_url, short_sha, stat, status_badge, table)
from dashboards.outcome_pages import job_why_block, node_outcome_rows


# ---------------------------------------------------------------- layout
_SEARCH = """<form class="search" action="/search" method="get" role="search">
<input type="search" name="q" value="{q}" placeholder="job ID, node or script" aria-label="Search">
<button type="submit">Search</button></form>"""


def layout(title, body, charts, assets, crumbs=(), json_url=None, q=""):
    """The full page.  ``assets``: dict with css/js tags (links, or inlined for reports)."""
    crumb = join(render(' <span class="sep">/</span> {c}', c=c) for c in crumbs)
    twin = render(' <a class="twin" href="{u}">JSON</a>', u=json_url) if json_url else Markup("")
    search = Markup(_SEARCH.format(q=esc(q)))
    if assets.get("report"):
        twin, search = assets.get("stamp", Markup("")), Markup("")
    return render(
        """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
{meta}<title>{title} · hookscope</title>
{css}</head>
<body>
<header class="top"><a class="brand" href="/">hookscope</a>
<nav class="crumbs">{crumb}</nav>
{search}</header>
<main><div class="title"><h1>{title}</h1>{twin}</div>
{body}</main>
<footer>hookscope · read-only view of the hook store</footer>
{data}{extra}{js}</body></html>
""", meta=assets.get("meta", Markup("")), title=title, css=assets["css"], crumb=crumb, search=search,
        twin=twin, extra=assets.get("extra", Markup("")), body=body, data=json_block(charts, "charts"), js=assets["js"])


def server_assets():
    return {"css": Markup('<link rel="stylesheet" href="/static/uPlot.min.css">'
                          '<link rel="stylesheet" href="/static/dash.css">'),
            "js": Markup('<script src="/static/uPlot.iife.min.js"></script>'
                         '<script src="/static/dash.js"></script>')}


def window_line(w, base):
    """The window shown, and links to common ones (relative to now)."""
    sep = "&" if "?" in base else "?"
    links = join(link(f"{base}{sep}since={r}", r) for r in ("24h", "7d", "30d", "365d"))
    return render('<p class="muted ranges">{a} → {b} · show the last{l} · <a href="{d}">newest data</a></p>',
                  a=fmt_time(w["since"]), b=fmt_time(w["until"]), l=links, d=base)


# ---------------------------------------------------------------- charts
def _epoch(iso):
    from dashboards.data import parse_time

    return parse_time(iso).timestamp() if iso else None


def _ts_chart(cid, title, unit, t, series, markers=(), kind="line", window=None, step=None):
    """A chart spec for dash.js; ``window`` (since/until ISO) fixes the x range."""
    spec = {"id": cid, "title": title, "unit": unit, "kind": kind, "x": t,
            "series": series, "markers": list(markers), "step": step}
    if window:
        spec["xmin"], spec["xmax"] = _epoch(window["since"]), _epoch(window["until"])
    return spec


def runs_chart(cid, d, window):
    return _ts_chart(cid, "Hook runs and failures", "runs", d["t"], [
        {"label": "hook runs", "values": d["runs"], "color": "#5b8def"},
        {"label": "failures", "values": d["failures"], "color": "#e5484d"}], kind="bars",
        window=window, step=window.get("bucket_s"))


def gpu_charts(prefix, gpu):
    marks = [{"t": m["t"], "label": f"{m['node']} GPU{m['gpu_index']}: {m['label']}", "kind": m["kind"]}
             for m in gpu["markers"]]
    out = []
    for col, (label, unit, _) in GPU_METRICS.items():
        out.append(_ts_chart(f"{prefix}-{col}", label, unit, gpu["t"], [
            {"label": g["label"], "values": gpu["metrics"][col][i]} for i, g in enumerate(gpu["gpus"])],
            markers=marks, step=gpu["bucket_s"]))
    return out


def gpu_section(prefix, gpu, title):
    if not gpu["gpus"]:
        return card(title, Markup('<p class="empty">No GPU samples in this window.</p>'))
    figs = join(chart(c["id"], f"{c['title']} ({c['unit']})", len(c["series"])) for c in gpu_charts(prefix, gpu))
    marks = table(["time", "node", "GPU", "event"],
                  [[fmt_time(m["time"]), m["node"], m["gpu_index"], m["label"]] for m in gpu["markers"]],
                  tid=f"{prefix}-markers")
    info = render('<p class="muted">{n} GPUs · {m} · one point per {b} s · red lines: XID, '
                  'amber lines: uncorrected ECC</p>', n=len(gpu["gpus"]),
                  m=", ".join(sorted({g["model"] or "unknown model" for g in gpu["gpus"]})), b=gpu["bucket_s"])
    return card(title, info + render('<div class="grid2">{f}</div><h3>ECC and XID events</h3>{t}',
                                     f=figs, t=marks), cid=f"{prefix}-section")


# ---------------------------------------------------------------- waterfall
def waterfall(hooks, scripts, width=1000):
    """Every hook of a job as an SVG waterfall.  Hooks bunch up at job start and
    end, hours apart, so idle gaps are cut out of the axis (marked by a break)."""
    if not hooks:
        return Markup("")
    segs = []  # [t_start, t_end] of bursts of hooks
    for h in sorted(hooks, key=lambda h: h["t0"]):
        if segs and h["t0"] <= segs[-1][1] + max(5.0, 0.5 * (segs[-1][1] - segs[-1][0])):
            segs[-1][1] = max(segs[-1][1], h["t1"])
        else:
            segs.append([h["t0"], h["t1"]])
    label_w, gap, row_h = 260, 18, 22
    avail = width - label_w - gap * (len(segs) - 1)
    seg_w = avail / len(segs)

    def x(t):
        for k, (a, b) in enumerate(segs):
            if t <= b or k == len(segs) - 1:
                span = max(b - a, 0.001)
                return label_w + k * (seg_w + gap) + seg_w * min(max(t - a, 0) / span, 1.0)
        return label_w

    by_hook = {}
    for s in scripts:
        by_hook.setdefault(s["hook_id"], []).append(s)
    t_first = segs[0][0]
    parts = []
    for k, (a, b) in enumerate(segs):
        x0 = label_w + k * (seg_w + gap)
        parts.append(render('<text class="axis" x="{x}" y="12">+{o} s · span {s}</text>',
                            x=round(x0, 1), o=f"{a - t_first:.1f}", s=fmt_ms((b - a) * 1000)))
        if k:
            parts.append(render('<path class="break" d="M{a} 18 l6 8 l-6 8 M{b} 18 l6 8 l-6 8"/>',
                                a=round(x0 - gap + 3, 1), b=round(x0 - gap + 9, 1)))
    y = 24
    for h in sorted(hooks, key=lambda h: (h["t0"], h["node"])):
        failed = bool(h.get("status"))
        x0, x1 = x(h["t0"]), x(h["t1"])
        parts.append(render(
            '<g class="hook{f}"><title>{tt}</title><text class="lbl" x="4" y="{ty}">{node} · {ctx}</text>'
            '<rect class="hookbar" x="{x}" y="{y}" width="{w}" height="{hh}" rx="2"/></g>',
            f=" failed" if failed else "", tt=f"{h['node']} {h['context']}: {fmt_ms(h['duration_ms'])}, "
            f"status {h.get('status')}", ty=y + 14, node=h["node"], ctx=h["context"],
            x=round(x0, 1), y=y + 3, w=round(max(x1 - x0, 3), 1), hh=row_h - 6))
        for s in by_hook.get(h["hook_id"], []):
            sx0, sx1 = x(s["t0"]), x(s["t1"])
            bad = bool(s.get("exit_code") or s.get("timed_out") or s.get("refused"))
            parts.append(render(
                '<rect class="scriptbar{b}" x="{x}" y="{y}" width="{w}" height="6"><title>{tt}</title></rect>',
                b=" failed" if bad else "", x=round(sx0, 1), y=y + row_h - 9, w=round(max(sx1 - sx0, 2), 1),
                tt=f"{s['script']}: {fmt_ms(s['duration_ms'])}, exit {s.get('exit_code')}"))
        y += row_h
    return render('<svg class="waterfall" id="waterfall" viewBox="0 0 {w} {h}" width="100%" '
                  'role="img" aria-label="hook waterfall">{p}</svg>', w=width, h=y + 6, p=join(parts))


# ---------------------------------------------------------------- pages
def _why_block(why):
    if not why:
        return Markup('<p class="muted">No explanation available.</p>')
    if why.get("error"):
        return render('<p class="muted">{e}</p>', e=why["error"])
    rows = []
    cause = why.get("cause") or {}
    for k in ("context", "script", "sha256", "exit_code", "signal", "timed_out", "job_id", "user", "time"):
        if cause.get(k) not in (None, ""):
            v = cause[k]
            if k == "script":
                v = link(script_url(v), v)
            elif k == "job_id":
                v = link(job_url(v), v)
            elif k == "time":
                v = fmt_time(v)
            elif isinstance(v, bool):
                v = "yes" if v else "no"
            rows.append([k.replace("_", " "), v])
    sysm = why.get("systemic") or {}
    if sysm:
        rows.append(["systemic", sysm.get("reason") or ", ".join(
            f"{k}: {v}" for k, v in sysm.items() if not isinstance(v, (list, dict, bool)))])

    rows += node_outcome_rows(why)
    reg = why.get("regression") or {}
    if reg and reg.get("changed"):
        rows.append(["regression", f"sha256 changed {reg.get('old', '')[:12]} -> {reg.get('new', '')[:12]} "
                                   f"at {reg.get('changed_at')}"])
    out = render('<p class="verdict{c}" id="why-verdict">{v}</p>', v=why.get("verdict"),
                 c="" if why.get("cause") or why.get("node_events") else " ok")
    if rows:
        out += table(["", ""], rows, cls="kv")
    if cause.get("output"):
        out += render('<h3>Output of the failing script</h3><pre class="output">{o}</pre>', o=cause["output"])
    return out


def overview_page(d, assets):
    t = d["totals"] or {}
    n_bad = sum(len(p["nodes"]) for p in d["problems"])
    stats = render('<div class="stats">{s}</div>', s=join([
        stat("hook runs", t.get("hook_runs", 0)),
        stat("failed hooks", t.get("failed_hooks", 0), bad=bool(t.get("failed_hooks"))),
        stat("jobs", t.get("jobs", 0)), stat("nodes", t.get("nodes", 0)),
        stat("drained / failing nodes", n_bad, bad=bool(n_bad))]))
    win = window_line(d["window"], "/")
    def _nodes(p):
        shown = [link(node_url(n), n) for n in p["nodes"][:12]]
        more = [render(' <span class="muted">and {n} more</span>', n=len(p["nodes"]) - 12)] if len(p["nodes"]) > 12 else []
        return join([join(shown, ", ")] + more)

    def _cause(p):
        if p["kind"] == "event":
            return render('<span class="muted">no failing hook; node event: {r}</span>', r=p.get("reason") or "")
        script = link(script_url(p["script"]), p["script"]) if p.get("script") else "(no script to blame)"
        return join([p.get("context") or "", " ", script, " ", short_sha(p.get("sha256")) if p.get("sha256") else "",
                     " ", ", ".join(p.get("failures") or [])])

    def _verdict(p):
        if p.get("verdict"):
            return p["verdict"]
        return link(node_url(p["nodes"][0]), "see the node page for the why verdict") if p["nodes"] else ""

    nodes = table(["nodes", "count", "state", "cause", "why"], [
        [_nodes(p), p["count"], p.get("state") or "", _cause(p), _verdict(p)] for p in d["problems"]],
        tid="problem-nodes")
    pmax = max([r["p99_ms"] or 0 for r in d["latency"]] or [0])
    lat = table(["context", "runs", "failures", "p50", "p99", ""], [
        [r["context"], r["runs"], r["failures"], fmt_ms(r["p50_ms"]), fmt_ms(r["p99_ms"]),
         bar(r["p99_ms"], pmax)] for r in d["latency"]], tid="latency")
    smax = max([r["p99_ms"] or 0 for r in d["slowest_scripts"]] or [0])
    slow = table(["script", "runs", "p50", "p99", "max", ""], [
        [link(script_url(r["path"]), r["path"]), r["runs"], fmt_ms(r["p50_ms"]), fmt_ms(r["p99_ms"]),
         fmt_ms(r["max_ms"]), bar(r["p99_ms"], smax)] for r in d["slowest_scripts"]], tid="slowest-scripts")
    fail = table(["script", "runs", "failures", "rate", ""], [
        [link(script_url(r["path"]), r["path"]), r["runs"], r["failures"], f"{100 * r['failure_rate']:.2f} %",
         bar(r["failure_rate"], 1.0, bad=True)] for r in d["failing_scripts"]], tid="failing-scripts")
    body = join([win, stats,
                 card("Hook runs and failures over time", chart("runs", "runs per bucket", 2)),
                 card("Drained and failing nodes", nodes),
                 render('<div class="grid2">{a}{b}</div>', a=card("Hook latency per context", lat),
                        b=card("Most failing scripts", fail)),
                 card("Slowest scripts (p99)", slow)])
    return layout("Overview", body, [runs_chart("runs", d["runs_over_time"], d["window"])], assets,
                  json_url="/overview.json")


def job_page(d, assets):
    m = d["meta"]
    meta_rows = [["job ID", m["job_id"]], ["job name", m.get("job_name")], ["user", m.get("user_name")],
                 ["account", m.get("account")], ["partition", m.get("partition")],
                 ["nodes", join([link(node_url(n), n) for n in m.get("nodes") or []], ", ")],
                 ["nodelist", m.get("nodelist")], ["GPUs", m.get("gpus")], ["cluster", m.get("cluster")],
                 ["first hook", fmt_time(m.get("first_hook"))], ["last hook", fmt_time(m.get("last_hook"))],
                 ["hook runs", f"{m.get('hook_runs')} ({m.get('failed_hooks')} failed)"]]
    if m.get("array_job_id"):
        meta_rows.append(["array", f"{m['array_job_id']}_{m.get('array_task_id')}"])
    rows = d["audit"] if d.get("audit") is not None else d["scripts"]
    runs = table(["start", "node", "context", "script", "sha256", "result", "duration", "output", "attested"], [
        [fmt_time(r.get("start")), link(node_url(r["node"]), r["node"]), r.get("context"),
         link(script_url(r["script"]), r["script"]) if r.get("script") else "(no script)",
         short_sha(r.get("sha256")), script_result(r), fmt_ms(r.get("duration_ms")), output_cell(r.get("output")),
         r.get("attested") or "root"]
        for r in rows], tid="runs")

    body = join([
        card("Why", job_why_block(d.get("why")), cid="why"),
        render('<div class="grid-meta">{a}{b}</div>', a=card("Job", table(["", ""], meta_rows, cls="kv", tid="meta")),
               b=card("Hook waterfall (controller and nodes)", waterfall(d["hooks"], d["scripts"]))),
        gpu_section("gpu", d["gpu"], "GPU metrics over the job"),
        card("Every script run of the job", runs)])
    return layout(f"Job {d['job_id']}", body, gpu_charts("gpu", d["gpu"]) if d["gpu"]["gpus"] else [],
                  assets, crumbs=["job", d["job_id"]], json_url=job_url(d["job_id"]) + ".json")


def node_page(d, assets):
    hooks = table(["start", "job", "context", "status", "duration", "user", "attested"], [
        [fmt_time(h["start"]), link(job_url(h["job_id"]), h["job_id"]) if h.get("job_id") else "",
         h["context"], status_badge(bool(h.get("status")), f"status {h.get('status')}"),
         fmt_ms(h.get("duration_ms")), h.get("user"), h.get("attested") or "root"] for h in d["hooks"]],
        tid="hooks")
    fails = table(["start", "job", "context", "script", "sha256", "result", "output"], [
        [fmt_time(f["start"]), link(job_url(f["job_id"]), f["job_id"]) if f.get("job_id") else "", f["context"],
         link(script_url(f["script"]), f["script"]), short_sha(f.get("sha256")), script_result(f),
         output_cell(f.get("output"))] for f in d["failures"]], tid="failures")
    events = table(["time", "state", "reason", "source"],
                   [[fmt_time(e["time"]), e.get("state"), e.get("reason"), e.get("source")] for e in d["events"]],
                   tid="events")
    body = join([window_line(d["window"], node_url(d["node"])), card("Why", _why_block(d.get("why")), cid="why"),
                 card("Hook runs and failures over time", chart("runs", "runs per bucket", 2)),
                 gpu_section("gpu", d["gpu"], "GPU health over time"),
                 card("Failed scripts", fails), card("Node events", events),
                 card("Hook history (latest 200)", hooks)])
    charts = [runs_chart("runs", d["runs_over_time"], d["window"])]
    if d["gpu"]["gpus"]:
        charts += gpu_charts("gpu", d["gpu"])
    return layout(f"Node {d['node']}", body, charts, assets, crumbs=["node", d["node"]],
                  json_url=node_url(d["node"]) + ".json")


def script_page(d, assets):
    vers = table(["sha256", "first seen", "last seen", "runs", "failures", "failure rate", "p50", "p95", "p99",
                  "nodes"], [
        [short_sha(v["sha256"]), fmt_time(v["first_seen"]), fmt_time(v["last_seen"]), v["runs"], v["failures"],
         f"{100 * v['failure_rate']:.2f} %", fmt_ms(v["p50_ms"]), fmt_ms(v["p95_ms"]), fmt_ms(v["p99_ms"]),
         v["nodes"]] for v in d["versions"]], tid="versions")
    diff = table(["node", "runs sha256", "last run"], [
        [link(node_url(r["node"]), r["node"]), short_sha(r["sha256"]), fmt_time(r["last_run"])]
        for r in d["nodes_different"]], tid="different")
    fails = table(["start", "node", "job", "sha256", "result", "duration", "output"], [
        [fmt_time(f["start"]), link(node_url(f["node"]), f["node"]),
         link(job_url(f["job_id"]), f["job_id"]) if f.get("job_id") else "", short_sha(f.get("sha256")),
         script_result(f), fmt_ms(f.get("duration_ms")), output_cell(f.get("output"))] for f in d["failures"]],
        tid="failures")
    ref = render('<p class="muted">Reference version (run by most nodes now): {s}</p>',
                 s=short_sha(d["majority_sha256"]))
    vot = d["versions_over_time"]
    chart_spec = _ts_chart("versions", "Runs per version", "runs", vot["t"], [
        {"label": v["sha256"][:12], "values": vot["counts"][i]} for i, v in enumerate(d["versions"])], kind="bars",
        window=d["window"], step=d["window"]["bucket_s"])
    body = join([window_line(d["window"], script_url(d["path"])),
                 card("Versions over time", chart("versions", "runs per version", len(d["versions"]))),
                 card("Failure rate and duration per version", vers),
                 card("Nodes running a different version", ref + diff),
                 card("Recent failures", fails)])
    return layout(f"Script {d['path']}", body, [chart_spec], assets, crumbs=["script", d["path"]],
                  json_url="/script.json?" + urlencode({"path": d["path"]}))


def search_page(d, assets):
    jobs = table(["job", "name", "user", "first hook"], [
        [link(job_url(j["job_id"]), j["job_id"]), j.get("job_name"), j.get("user"), fmt_time(j.get("start"))]
        for j in d["jobs"]], tid="jobs")
    nodes = table(["node", "hook runs"], [[link(node_url(n["node"]), n["node"]), n["hook_runs"]]
                                          for n in d["nodes"]], tid="nodes")
    scripts = table(["script", "runs"], [[link(script_url(s["path"]), s["path"]), s["runs"]]
                                         for s in d["scripts"]], tid="scripts")
    body = join([card("Jobs", jobs), render('<div class="grid2">{a}{b}</div>', a=card("Nodes", nodes),
                                            b=card("Scripts", scripts))])
    return layout(f"Search: {d['q']}", body, [], assets, crumbs=["search"], q=d["q"],
                  json_url="/search.json?" + urlencode({"q": d["q"]}))


def error_page(status, message, assets):
    return layout(f"{status}", render('<section class="card"><p class="error">{m}</p>'
                                      '<p><a href="/">Back to the overview</a></p></section>', m=message),
                  [], assets)

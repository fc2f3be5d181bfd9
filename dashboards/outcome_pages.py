"""HTML for what a hook failure did (issue 16): the job page's ``why job``
verdict, and the node page's consequence, boot-time init and stale-version
rows.  Rendered from the queries' own dicts (queries/jobwhy.py, why.py);
every value is escaped by ``pages.render`` unless it is Markup built here.
"""

from dashboards.html import (Markup, esc, fmt_time, join, job_url, link, node_url, render, script_url,
                             short_sha, table)


def _script(v):
    return link(script_url(v), v) if v else "(no script to blame)"


def _result(f):
    return f.get("what") or ""


def job_why_block(why):
    """The job page's verdict card body."""
    if not why:
        return Markup('<p class="muted">No explanation available.</p>')
    if why.get("error"):
        return render('<p class="muted">{e}</p>', e=why["error"])
    dec, out = why.get("decided_by"), why.get("outcome") or {}
    body = render('<p class="verdict{c}" id="job-verdict">{v}</p>', v=why.get("verdict"),
                  c="" if dec else " ok")
    rows = []
    if out:
        state = out.get("job") or ("the job had ended" if out.get("scope") == "logged" else "")
        if out.get("reason"):
            state = f"{state} (Reason '{out['reason']}')"
        rows.append(["what Slurm did to the job", state])
        if out.get("node"):
            rows.append(["what Slurm did to the node", f"{out['node']} ({out.get('drain_reason')})"])
    if dec:
        rows += [["decided by", f"{dec.get('hook')} ({dec.get('context')})"],
                 ["node", link(node_url(dec["node"]), dec["node"])],
                 ["script", _script(dec.get("script"))],
                 ["version", short_sha(dec.get("sha256")) if dec.get("sha256") else ""],
                 ["result", _result(dec)], ["time", fmt_time(dec.get("time"))]]
    e = why.get("elsewhere")
    if e:
        rows.append(["elsewhere", f"{e['failed_count']} other node(s) failed the same version, "
                                  f"{e['ok_count']} ran it fine: {e['fault']} fault"])
    r = why.get("retry")
    if r:
        rows.append(["retry", "none recorded" if not r["ran"] else
                     f"restart count {r.get('restart_count') if r.get('restart_count') is not None else r['attempt']}"
                     f" at {fmt_time(r['start'])} on {', '.join(r['nodes'])}: "
                     + ("all hooks succeeded" if not r["failed_hooks"] else f"{r['failed_hooks']} hook(s) failed")])
    for t in why.get("prolog_timing") or []:
        if t.get("delays_step"):
            rows.append(["prolog timing", t["text"]])
    for s in why.get("stale") or []:
        rows.append(["stale version", join([s["node"], " runs ", short_sha(s["sha256"]), " while ",
                                            s["nodes_on_current"], " peer(s) run ", short_sha(s["current_sha256"]),
                                            f" (lagging {s['lag']})"])])
    init = why.get("init")
    if init and (init.get("failed") or not init.get("ran")):
        rows.append(["boot-time init", ("failed: " + (init.get("script") or "") + f" exit {init.get('exit_code')}")
                     if init.get("ran") else f"never ran on this node ({init.get('peers_with_init')} peers have one)"])
    for x in out.get("inferred") or []:
        rows.append(["inferred", x])
    if rows:
        body += table(["", ""], rows, cls="kv", tid="job-why")
    if dec and dec.get("output"):
        body += render('<h3>Output of the deciding script</h3><pre class="output">{o}</pre>', o=dec["output"])
    fails = why.get("failures") or []
    if len(fails) > 1:
        body += render("<h3>Every failed hook of the job</h3>{t}", t=table(
            ["run", "time", "hook", "node", "script", "result"],
            [[f["attempt"], fmt_time(f["time"]), f["hook"], link(node_url(f["node"]), f["node"]),
              _script(f.get("script")), _result(f)] for f in fails], tid="job-failures"))
    return body


def node_outcome_rows(why):
    """Extra rows of the node page's Why table: what the failure did, the
    node's boot-time init run, and scripts it runs in an old version."""
    rows = []
    c = (why or {}).get("cause") or {}
    con = c.get("consequence") or {}
    if con.get("text"):
        rows.append(["what Slurm did", con["text"]])
    init = (why or {}).get("init")
    if init and init.get("ran") and init.get("failed"):
        rows.append(["boot-time init", join([init.get("context") or "", " failed: ", _script(init.get("script")),
                                             f" exit {init.get('exit_code')} at ", fmt_time(init.get("time"))])])
    elif init and not init.get("ran"):
        rows.append(["boot-time init", f"no run recorded ({init.get('peers_with_init')} other node(s) have one)"])
    for s in (why or {}).get("stale") or []:
        rows.append(["stale version", join([_script(s["path"]), ": ", short_sha(s["sha256"]), " while ",
                                            s["nodes_on_current"], " peer(s) run ", short_sha(s["current_sha256"]),
                                            " since ", fmt_time(s["current_since"]), f" (lagging {s['lag']})"])])
    return rows


__all__ = ["job_why_block", "node_outcome_rows", "esc", "job_url"]

"""The ``hookscope audit``, ``why`` and ``drains`` commands: a thin click
layer over the queries library.  Each command reads one source (``--db`` or
``--archive``), a window (``--since``/``--until``: ISO-8601 or 24h/7d), and
prints a readable table, or the data itself with ``--json``, or writes it to
a file with ``--format csv|parquet|json -o FILE``.
"""

from __future__ import annotations

import functools
import os
import sys

import click

from queries import QueryError

ENV_DB = "HOOKSCOPE_DB"
ENV_ARCHIVE = "HOOKSCOPE_ARCHIVE"


def _source_options(fn):
    @click.option("--db", "db", type=click.Path(dir_okay=False), envvar=ENV_DB, show_envvar=True,
                  help="The collector's DuckDB store (its snapshot is read while the collector runs).")
    @click.option("--archive", type=click.Path(file_okay=False), envvar=ENV_ARCHIVE, show_envvar=True,
                  help="The Parquet archive root instead of --db.")
    @click.option("--since", help="Start of the window: ISO-8601 (2026-12-01T10:00Z) or an age (24h, 7d).")
    @click.option("--until", help="End of the window (exclusive), same forms as --since.")
    @click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
    @click.option("--format", "fmt", type=click.Choice(["csv", "parquet", "json"]),
                  help="Export the result to -o FILE in this format.")
    @click.option("-o", "--output", type=click.Path(dir_okay=False), help="File to export to.")
    @functools.wraps(fn)
    def wrapper(db, archive, since, until, as_json, fmt, output, **kw):
        try:
            from queries.safetext import json_text, visible
            from queries.source import open_source, parse_time

            if db and archive:
                # An env var must not silently win over an explicit flag.
                if os.environ.get(ENV_ARCHIVE) == archive:
                    archive = None
                elif os.environ.get(ENV_DB) == db:
                    db = None
            if not db and not archive:
                raise click.UsageError(f"give the store with --db FILE or --archive DIR "
                                       f"(or set {ENV_DB} / {ENV_ARCHIVE})")
            if output and not fmt:
                fmt = os.path.splitext(output)[1].lstrip(".").lower() or None
                if fmt not in ("csv", "parquet", "json"):
                    raise click.UsageError(f"cannot tell the export format of {output}: add --format csv|parquet|json")
            if fmt and not output:
                raise click.UsageError("--format needs -o FILE")
            parse_time(since), parse_time(until)  # fail before opening the store
            con = open_source(db=db, archive=archive)
            try:
                data, render = fn(con, since=since, until=until, **kw)
            finally:
                con.close()
            if output:
                from queries.export import export

                export(data, fmt, output)
                n = len(data) if isinstance(data, list) else 1
                click.echo(f"wrote {n} row(s) as {fmt} to {output}", err=True)
            elif as_json:
                # Text is data, never control (queries/safetext.py): JSON stays
                # lossless with C1/bidi escaped; text has every control made visible.
                click.echo(json_text(data, indent=2))
            else:
                click.echo(visible(render(data), keep_layout=True))
            code = getattr(render, "exit_code", None)
            if code is not None:
                sys.exit(code(data))
        except QueryError as exc:
            raise click.ClickException(visible(str(exc), keep_layout=True)) from exc
    return wrapper


_AUDIT_COLUMNS = ["start", "node", "context", "job_id", "user", "script", "sha256", "exit_code",
                  "signal", "timed_out", "refused", "duration_ms", "attested"]


def _render_audit(rows):
    from queries.table import render, short_sha

    view = [{**r, "sha256": short_sha(r["sha256"])} for r in rows]
    return render(view, _AUDIT_COLUMNS, widths={"script": 48})


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Example:\n\n  hookscope audit job 123456 --db /var/lib/hookscope/hookscope.duckdb")
def audit():
    """Audit trail: jobs, scripts, nodes, users, and hash-chain verification."""


@audit.command("job")
@click.argument("job_id")
@_source_options
def audit_job_cmd(con, job_id, since, until):
    """Every hook run of JOB_ID, on the controller and every node, in time order.

    Example:

      hookscope audit job 123456 --db hookscope.duckdb --json
    """
    from queries.audit import audit_job

    return audit_job(con, job_id, since, until), _render_audit


@audit.command("node")
@click.argument("node")
@click.option("--limit", type=int, default=None, help="At most this many rows.")
@_source_options
def audit_node_cmd(con, node, limit, since, until):
    """Every hook run on NODE, in time order.

    Example:

      hookscope audit node gpu042 --since 7d --db hookscope.duckdb
    """
    from queries.audit import audit_node

    return audit_node(con, node, since, until, limit=limit), _render_audit


@audit.command("user")
@click.argument("user")
@click.option("--limit", type=int, default=None, help="At most this many rows.")
@_source_options
def audit_user_cmd(con, user, limit, since, until):
    """Every hook run of USER's jobs, in time order.

    Example:

      hookscope audit user alice --since 30d --format csv -o alice.csv --db hookscope.duckdb
    """
    from queries.audit import audit_user

    return audit_user(con, user, since, until, limit=limit), _render_audit


@audit.command("script")
@click.argument("path")
@_source_options
def audit_script_cmd(con, path, since, until):
    """A script's versions (sha256 first/last run, nodes), drift and per-version health.

    Example:

      hookscope audit script /etc/slurm/prolog.d/50-gpu.sh --archive /srv/hookscope/archive
    """
    from queries.audit import audit_script
    from queries.table import render, short_sha

    def show(d):
        vs = [{**v, "sha256": short_sha(v["sha256"]), "nodes": v["n_nodes"]} for v in d["versions"]]
        out = [f"{d['path']}: {d['runs']} run(s), {d['failures']} failure(s)", "",
               render(vs, ["sha256", "first_seen", "last_seen", "runs", "failures", "failure_rate",
                           "p50_ms", "p95_ms", "p99_ms", "nodes"])]
        if d["drift"]:
            out += ["", f"configuration drift in {len(d['drift'])} hour(s):"]
            for h in d["drift"]:
                parts = [f"{short_sha(v['sha256'])} on {len(v['nodes'])} node(s) ({', '.join(v['nodes'][:5])}"
                         + (", …" if len(v["nodes"]) > 5 else "") + ")" for v in h["versions"]]
                out.append(f"  {h['hour']}: " + "; ".join(parts))
        else:
            out += ["", "no configuration drift (no hour saw two versions)"]
        from queries.outcomes import stale_sentence

        out += [f"stale: {stale_sentence(r)}" for r in d.get("stale") or []]
        return "\n".join(out)

    return audit_script(con, path, since, until), show


@audit.command("verify")
@click.option("--node", help="Verify only this node's chain.")
@click.option("--keys", "keys_file", type=click.Path(dir_okay=False), envvar="HOOKSCOPE_NODE_KEYS",
              show_envvar=True,
              help="Pin each node's NKey: a JSON object {node: public key} or the auth.conf of "
                   "deploy/nats/gen_auth.py; chain heads signed by any other key are findings.")
@_source_options
def audit_verify_cmd(con, node, keys_file, since, until):
    """Check every node's journal hash chain, the rows derived from it and
    the chain heads nodes signed: gaps, reorders, alterations, deleted tails.

    Exits 1 when a problem is found.  Every chain is verified whole: a
    window cannot be, so --since/--until are refused.  Findings are
    explained in docs/queries.md.

    Example:

      hookscope audit verify --node gpu042 --db hookscope.duckdb
    """
    from queries.table import render
    from queries.verify import verify_chain
    from queries.verify_heads import load_keys

    if since or until:
        # A window would hide what the window is about: a record moved 30
        # days back, or a deleted tail, is outside any window it is asked for.
        raise click.UsageError("audit verify checks whole chains and takes no --since/--until; "
                               "use --node NODE to verify one node's chains")

    def show(d):
        head = (f"{'OK' if d['ok'] else 'PROBLEMS'}: {d['checked']['records']} journal record(s) "
                f"on {d['checked']['nodes']} node(s) checked, {d['checked'].get('heads') or 0} chain "
                f"head(s) ({d['checked'].get('signed_heads') or 0} signed), {len(d['problems'])} problem(s)")
        out = [head]
        if d["problems"]:
            out += ["", render(d["problems"], ["node", "seq", "kind", "detail"], widths={"detail": 100})]
        if d["info"]:
            out += ["", "info:", render(d["info"], ["node", "seq", "kind", "detail"], widths={"detail": 100})]
        return "\n".join(out)

    show.exit_code = lambda d: 0 if d["ok"] else 1
    return verify_chain(con, node, keys=load_keys(keys_file) if keys_file else None), show


@audit.command("views")
def audit_views_cmd():
    """Print the documented SQL views, to write your own SQL in the DuckDB CLI.

    Example:

      hookscope audit views > views.sql
    """
    from queries.views import views_sql

    click.echo(views_sql())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("node")
@click.argument("job_id", required=False)
@click.option("--scheduler-parameters", envvar="HOOKSCOPE_SCHEDULER_PARAMETERS", show_envvar=True,
              help="why job: the site's SchedulerParameters (as 'scontrol show config' prints it), "
                   "so nohold_on_prolog_fail is read, not assumed.")
@click.option("--prolog-flags", envvar="HOOKSCOPE_PROLOG_FLAGS", show_envvar=True,
              help="why job: the site's PrologFlags (e.g. Alloc,Contain), so when the Prolog ran is read.")
@_source_options
def why(con, node, job_id, scheduler_parameters, prolog_flags, since, until):
    """Explain why NODE drained or is failing hooks; 'why job J': what happened to job J.

    Names the script, its exit status and output, whether it fails on other
    nodes too (script or node fault), whether its sha256 changed just before,
    GPU signals around the failure, and node events (of the last 30 days, or
    since --since; older only as far as they bear on the verdict).  A drain
    with no hook failure is reported as such.  'why job J' says what Slurm did to the job
    (requeued held, cancelled, step cancelled), which hook, script, version
    and output decided it, on which node, and what its retry did.

    Example:

      hookscope why gpu042 --db /var/lib/hookscope/hookscope.duckdb --json

      hookscope why job 123456 --db /var/lib/hookscope/hookscope.duckdb
    """
    if job_id is not None:
        if node != "job":
            raise click.UsageError(f"give one node (why NODE) or a job (why job JOB_ID), not {node!r} {job_id!r}")
        from queries.jobwhy import render_job, why_job

        return why_job(con, job_id, since, until, scheduler_parameters, prolog_flags), render_job
    from queries.table import kv, short_sha
    from queries.why import why as why_fn

    def show(d):
        out = [d["verdict"], ""]
        c = d["cause"]
        if c:
            out += ["cause:", _indent(kv({**c, "sha256": short_sha(c["sha256"])},
                                         ["time", "context", "script", "sha256", "exit_code", "signal",
                                          "timed_out", "refused", "job_id", "user", "drain_reason"]))]
            if c.get("output"):
                out += ["output:", _indent(c["output"].rstrip())]
        if d["systemic"]:
            s = d["systemic"]
            out += ["", f"systemic: {s['fault']} fault ({s['reason']}); failed on: "
                    + ", ".join(s["nodes"][:10]) + (" …" if s["count"] > 10 else "")]
        r = d["regression"]
        if r and r.get("changed"):
            out += [f"regression: {short_sha(r['old'])} -> {short_sha(r['new'])} at {r['changed_at']}"]
        g = d["gpu"]
        if g and g["signals"]:
            out += ["gpu: " + "; ".join(g["signals"])]
        if d["node_events"]:
            out += ["", "node events:"] + [f"  {e['time']}  {e['state']}  {e['reason'] or ''}  ({e['source']})"
                                           for e in d["node_events"][:10]]
        if d.get("earlier_hook_failure"):
            e = d["earlier_hook_failure"]
            out += ["", f"(earlier hook failure, not the drain's cause: {e['script']} exit {e['exit_code']} "
                        f"at {e['time']})"]
        return "\n".join(out)

    return why_fn(con, node, since, until), show


def _indent(text, pad="  "):
    return "\n".join(pad + line for line in str(text).splitlines())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_source_options
def drains(con, since, until):
    """Nodes whose latest hook run failed, grouped by cause, worst first.

    One broken script on 300 nodes is one row with count 300.

    Example:

      hookscope drains --since 24h --db /var/lib/hookscope/hookscope.duckdb
    """
    from queries.drains import drains as drains_fn
    from queries.table import render, short_sha

    def show(rows):
        view = [{**r, "sha256": short_sha(r["sha256"]),
                 "nodes": ", ".join(r["nodes"][:6]) + (" …" if r["count"] > 6 else "")} for r in rows]
        return render(view, ["count", "context", "script", "sha256", "failures", "last_failure", "nodes"],
                      widths={"script": 48, "nodes": 60})

    return drains_fn(con, since, until), show

"""``hookscope dashboard`` and ``hookscope report``: thin click commands over
dashboards.server and dashboards.report.

Settings are resolved once, by dashboards.settings (option, then environment
variable, then ``[dashboard]`` of the config file, then the default) and
validated there.  Each option here declares its ``envvar=`` (shown in ``-h``);
what was typed on the command line is passed on as the argument, the rest
the library resolves.
"""

import sys

import click
from click.core import ParameterSource

from dashboards import DashboardError
from dashboards import settings as ds
from dashboards.settings import ARCHIVE_ENV as ENV_ARCHIVE
from dashboards.settings import DB_ENV as ENV_DB
from dashboards.settings import DEFAULT_PORT  # noqa: F401  (also hookscope serve's: dashboards.serve)

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _settings(ctx, resolve=ds.resolve_dashboard):
    """The library's resolution of what was typed (a value click read from an
    option's environment variable is left to the library, which reads the
    same variable in the same order)."""
    args = {k: v for k, v in ctx.params.items()
            if k in ds.KEYS and ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    if args.get("db") and args.get("archive"):
        raise click.UsageError("give one store: --db FILE or --archive DIR, not both")
    try:
        return resolve(args, config=ctx.params.get("config"))
    except ds.NoStore as exc:
        raise click.UsageError(str(exc)) from None
    except DashboardError as exc:
        raise click.ClickException(str(exc)) from None


def _source_options(fn):
    fn = click.option("--config", metavar="FILE", envvar=ds.CONFIG_ENV, show_envvar=True,
                      help="hookscope.toml: its [dashboard] section gives defaults for these options "
                           "(default: /etc/hookscope/hookscope.toml, if present).")(fn)
    fn = click.option("--archive", type=click.Path(file_okay=False), envvar=ENV_ARCHIVE, show_envvar=True,
                      help="The Parquet archive root instead of --db.")(fn)
    fn = click.option("--db", type=click.Path(dir_okay=False), envvar=ENV_DB, show_envvar=True,
                      help="The collector's DuckDB store, opened read-only (its snapshot while the "
                           "collector runs).")(fn)
    return fn


@click.command(context_settings=CONTEXT)
@_source_options
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Anything but loopback needs --token (or --no-auth).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: pick a free one).")
@click.option("--token", envvar=ds.TOKEN_ENV, show_envvar=True,
              help="Bearer token every request must carry (header, ?token= once, then a cookie).")
@click.option("--no-auth", is_flag=True, help="Serve a non-loopback address without a token, on purpose.")
@click.option("--verbose", is_flag=True, help="Log every request on stderr.")
@click.pass_context
def dashboard(ctx, db, archive, config, host, port, token, no_auth, verbose):
    """Serve the read-only web dashboard: overview, job, node and script pages,
    each with a JSON twin (append .json or ?format=json).

    \b
    Example:
      hookscope dashboard --db /var/lib/hookscope/hookscope.duckdb
      ssh -L 8765:localhost:8765 collector-host   # then open http://localhost:8765/
    """
    from dashboards.server import make_server

    s = _settings(ctx)
    try:
        srv = make_server(settings=s, quiet=not verbose)
    except DashboardError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"hookscope dashboard on {srv.url}" + (" (token required)" if srv.token else ""), err=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.server_close()


@click.group(context_settings=CONTEXT)
def report():
    """Write a self-contained HTML report (assets inlined, no network needed to view it).

    \b
    Example:
      hookscope report job 123456 -o job-123456.html --db hookscope.duckdb
    """


def _window_options(fn):
    fn = click.option("--until", help="Window end (exclusive), same forms as --since.")(fn)
    return click.option("--since", help="Window start: ISO-8601 or an age (7d); default: 7 days before "
                                        "the node's newest hook run.")(fn)


def _report_cmd(kind, argname, example):
    # a job report is the job's whole life: only the node report takes a window
    window = _window_options if kind == "node" else (lambda fn: fn)

    @report.command(kind)
    @click.argument(argname)
    @click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The HTML file to write.")
    @_source_options
    @click.option("--base-url", help="Dashboard URL to make the report's links point to (default: no links).")
    @window
    @click.pass_context
    def cmd(ctx, output, db, archive, config, base_url, since=None, until=None, **kw):
        from dashboards.report import write_report

        db, archive = _settings(ctx, ds.resolve_store)  # a report binds nothing: the store alone
        try:
            path = write_report(kind, kw[argname], output, db=db, archive=archive, base_url=base_url,
                                since=since, until=until)
        except DashboardError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"wrote {path}", err=True)

    cmd.__doc__ = f"The {kind} page as one HTML file an auditor can attach to a ticket.\n\n" \
                  f"\b\nExample:\n  {example}"
    cmd.help = cmd.__doc__
    return cmd


report_job = _report_cmd("job", "job_id", "hookscope report job 123456 -o report.html --db hookscope.duckdb")
report_node = _report_cmd("node", "node", "hookscope report node gpu042 -o gpu042.html --db hookscope.duckdb")


def main(argv=None):  # python -m dashboards.cli
    return dashboard.main(args=argv, prog_name="hookscope dashboard")


if __name__ == "__main__":
    sys.exit(main())

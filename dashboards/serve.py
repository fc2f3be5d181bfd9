"""``hookscope serve``: embedded nats-server + collector + dashboard on one machine.

It lives here, not in collector/, because it wires the dashboard to the
collector: dashboards may import collector, never the reverse
(docs/architecture.md).  Options and their resolution (option, environment,
``[collector]`` config section, default) are ``hookscope collect``'s, from
collector.cli (resolved by collector.config), plus the dashboard's own
(resolved by dashboards.settings, from the same config file's ``[dashboard]``).
"""

from __future__ import annotations

import os
import sys
import threading

import click
from click.core import ParameterSource

from collector.cli import CONTEXT, _ERRORS, _opt, _options, _run, _settings
from dashboards.settings import DEFAULT_PORT, TOKEN_ENV, resolve_dashboard


@click.command(context_settings=CONTEXT)
@_options
@click.option("--host", default="127.0.0.1", help="dashboard bind address")
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT,
              help="dashboard port, as 'hookscope dashboard' (0: any free)")
@_opt("--token", metavar="TOKEN", env=TOKEN_ENV, help="dashboard bearer token")
@click.pass_context
def serve(ctx, host, port, token, **opts):
    """Single machine: embedded nats-server + collector + dashboard in one command.

    Agents publish to the embedded server (port 4222 by default); the
    dashboard reads the store's read-only snapshot while the collector writes.

    \b
    Example:
        hookscope serve --db /var/lib/hookscope/hookscope.duckdb --port 8765
    """
    s = _settings(ctx, opts)
    # typed options; the library resolves the rest ($HOOKSCOPE_DASHBOARD_TOKEN, [dashboard], default)
    dash_args = {k: v for k, v in (("host", host), ("port", port), ("token", token))
                 if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    holder = {}

    def start_dashboard(url):
        from dashboards.server import make_server

        try:
            os.makedirs(s.archive, exist_ok=True)
            srv = make_server(settings=resolve_dashboard(dash_args, db=s.db, archive=s.archive,
                                                         config=s.config_file))
        except Exception as exc:
            click.echo(f"dashboard not started: {exc}", err=True)
            return
        holder["dash"] = srv
        threading.Thread(target=srv.serve_forever, name="hookscope-dashboard", daemon=True).start()
        h, p = srv.server_address[:2]
        click.echo(f"dashboard on http://{h}:{p}/  (NATS: {url})", err=True)

    try:
        _run(s, once=False, with_dashboard=start_dashboard)
    except _ERRORS as exc:
        raise click.ClickException(str(exc))
    finally:
        dash = holder.get("dash")
        if dash is not None:
            dash.shutdown()
            try:
                dash.server_close()
            except Exception:
                pass
    sys.stderr.flush()

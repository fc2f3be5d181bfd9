"""``hookscope collect | rebuild | serve``: a thin click layer over the collector library.

Settings resolve once, here: option, then environment variable, then the
``[collector]`` section of the config file (``emitter.config.load_config``),
then the default.
"""

from __future__ import annotations

import os
import sys
import threading

import click

from collector.errors import CollectorError

try:
    from emitter import EmitterError  # NATS connection errors come from emitter.natsio
except ImportError:  # pragma: no cover
    EmitterError = CollectorError
_ERRORS = (CollectorError, EmitterError)

DEFAULT_DB = "/var/lib/hookscope/hookscope.duckdb"
_KEYS = {"nats": "HOOKSCOPE_NATS_URL", "db": "HOOKSCOPE_DB", "archive": "HOOKSCOPE_ARCHIVE",
         "creds": "HOOKSCOPE_NATS_CREDS", "nkey": "HOOKSCOPE_NATS_NKEY", "user": "HOOKSCOPE_NATS_USER",
         "password": "HOOKSCOPE_NATS_PASSWORD", "tls_ca": "HOOKSCOPE_NATS_TLS_CA",
         "tls_cert": "HOOKSCOPE_NATS_TLS_CERT", "tls_key": "HOOKSCOPE_NATS_TLS_KEY",
         "metrics": "HOOKSCOPE_COLLECTOR_METRICS", "name": "HOOKSCOPE_COLLECTOR_NAME",
         "memory_limit": "HOOKSCOPE_COLLECTOR_MEMORY_LIMIT"}
_AUTH = ("creds", "nkey", "user", "tls_ca", "tls_cert", "tls_key")
_SECTION_KEYS = {"nats", "db", "archive", "metrics", "name", "batch", "replicas",
                 "snapshot_interval", "nats_port", "ack_wait", "memory_limit", "password", *_AUTH}


def _section(config_path):
    try:
        from emitter.config import load_config
    except ImportError:
        return {}
    try:
        cfg = load_config(config_path) or {}
    except Exception as exc:  # ConfigError names the file and the fix
        raise click.ClickException(str(exc))
    sec = cfg.get("collector") or {}
    if not isinstance(sec, dict):
        raise click.ClickException("config: [collector] must be a table")
    unknown = set(sec) - _SECTION_KEYS
    if unknown:
        raise click.ClickException(f"config: unknown key(s) in [collector]: {', '.join(sorted(unknown))} "
                                   f"(known: {', '.join(sorted(_SECTION_KEYS))})")
    return sec


def _resolve(value, key, section, default=None):
    if value not in (None, ""):
        return value
    env = _KEYS.get(key)
    if env and os.environ.get(env):
        return os.environ[env]
    if key in section:
        return section[key]
    return default


def _settings(config, **opts):
    sec = _section(config)
    s = {k: _resolve(v, k, sec) for k, v in opts.items()}
    s["db"] = os.path.abspath(s.get("db") or DEFAULT_DB)
    if "archive" in opts:
        s["archive"] = os.path.abspath(s["archive"]) if s.get("archive") else os.path.join(
            os.path.dirname(s["db"]), "archive")
    for k, d in (("batch", 2048), ("replicas", 1), ("snapshot_interval", 1.0), ("nats_port", 4222),
                 ("ack_wait", 60.0)):
        if k in opts:
            s[k] = type(d)(s[k] if s[k] is not None else sec.get(k, d))
    if "memory_limit" in opts and s.get("memory_limit") is None:
        from collector.config import DEFAULT_MEMORY_LIMIT
        s["memory_limit"] = DEFAULT_MEMORY_LIMIT
    # never a command-line option (it would show in ps): environment or config only,
    # and only for a user (an agent's HOOKSCOPE_NATS_PASSWORD must not leak in)
    s["password"] = _resolve(None, "password", sec) if s.get("user") else None
    for k in _AUTH:
        if s.get(k) is not None and not isinstance(s[k], str):
            raise click.ClickException(f"config: [collector] {k} must be a string")
    return s


def _auth(s) -> dict:
    return {k: s.get(k) for k in (*_AUTH, "password")}


def _embedded(db, port, announce=True):
    from collector.embedded import NatsServer
    srv = NatsServer(store_dir=os.path.join(os.path.dirname(db), "nats"), port=port)
    srv.start()
    if announce:
        click.echo(f"embedded nats-server (JetStream in {srv.store_dir}) listening on {srv.url}", err=True)
    return srv


def _run(s, once, with_dashboard=None):
    from collector.config import CollectorConfig
    from collector.consumer import run_collector
    server = None
    url = s.get("nats")
    if not url:
        server = _embedded(s["db"], s.get("nats_port", 4222))
        url = server.url
    try:
        cfg = CollectorConfig(nats_url=url, db=s["db"], archive=s["archive"], batch=s["batch"],
                              replicas=s["replicas"], snapshot_interval=s["snapshot_interval"],
                              ack_wait=s.get("ack_wait", 60.0), memory_limit=s.get("memory_limit"),
                              **_auth(s), **({"instance": s["name"]} if s.get("name") else {}))
        if with_dashboard is not None:
            with_dashboard(url)
        stats = run_collector(cfg, once=once, metrics_addr=s.get("metrics"))
    finally:
        if server is not None:
            server.stop()  # SIGTERM: nats-server flushes JetStream and exits cleanly
    dead = sum(stats.get("dead_letters", {}).values())
    click.echo(f"stored {stats['messages']} messages ({stats['spans']} spans, {stats['gpu_samples']} GPU "
               f"samples), {dead} dead-lettered, into {s['db']}", err=True)


_auth_options = [
    click.option("--creds", metavar="FILE", help="NATS .creds file [env HOOKSCOPE_NATS_CREDS]"),
    click.option("--nkey", metavar="FILE", help="NATS nkey seed file of the collector user "
                 "[env HOOKSCOPE_NATS_NKEY]"),
    click.option("--user", metavar="USER", help="NATS user; the password comes from HOOKSCOPE_NATS_PASSWORD "
                 "or [collector] password [env HOOKSCOPE_NATS_USER]"),
    click.option("--tls-ca", "tls_ca", metavar="FILE", help="CA bundle to verify the NATS server "
                 "[env HOOKSCOPE_NATS_TLS_CA]"),
    click.option("--tls-cert", "tls_cert", metavar="FILE", help="client certificate for mutual TLS "
                 "[env HOOKSCOPE_NATS_TLS_CERT]"),
    click.option("--tls-key", "tls_key", metavar="FILE", help="client key for mutual TLS "
                 "[env HOOKSCOPE_NATS_TLS_KEY]"),
]

_common = [
    click.option("--nats", "nats", metavar="URL", help="NATS server(s), comma-separated; none: start the "
                 "embedded nats-server next to the DB [env HOOKSCOPE_NATS_URL]"),
    click.option("--db", metavar="FILE", help=f"live DuckDB file [env HOOKSCOPE_DB; default {DEFAULT_DB}]"),
    click.option("--archive", metavar="DIR", help="Parquet archive directory [env HOOKSCOPE_ARCHIVE; "
                 "default <db dir>/archive]"),
    *_auth_options,
    click.option("--name", metavar="NAME", help="collector instance name (ingest_state key, archive file "
                 "prefix); unique per instance [default: short hostname]"),
    click.option("--batch", type=int, help="messages per fetch/commit [default 2048]"),
    click.option("--replicas", type=int, help="stream replicas when creating streams (3 on a 3-node cluster)"),
    click.option("--snapshot-interval", "snapshot_interval", type=float,
                 help="seconds between read-only snapshots at most [default 1.0]"),
    click.option("--metrics", metavar="HOST:PORT", help="serve Prometheus /metrics here "
                 "[env HOOKSCOPE_COLLECTOR_METRICS]"),
    click.option("--nats-port", "nats_port", type=int, help="port of the embedded nats-server [default 4222; "
                 "0: any free port]"),
    click.option("--ack-wait", "ack_wait", type=float, help="seconds before JetStream redelivers a message "
                 "fetched but not acked (e.g. by a killed collector) [default 60]"),
    click.option("--memory-limit", "memory_limit", metavar="SIZE", help="DuckDB memory limit, e.g. 512MB, "
                 "2GB; 'none': DuckDB's default, 80% of RAM [env HOOKSCOPE_COLLECTOR_MEMORY_LIMIT; "
                 "default 512MB]"),
    click.option("--config", "config", metavar="FILE", help="hookscope.toml ([collector] section)"),
]


def _options(fn):
    for opt in reversed(_common):
        fn = opt(fn)
    return fn


def _auth_opts(fn):
    for opt in reversed(_auth_options):
        fn = opt(fn)
    return fn


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_options
@click.option("--once", is_flag=True, help="exit when the stream has been drained (idle for 1 s)")
def collect(once, config, **opts):
    """Consume JetStream into the DuckDB store and the Parquet archive.

    Acks each message only after its rows are committed; redelivery and
    replays insert nothing twice.  SIGTERM finishes the batch, acks, closes.

    Example:

        hookscope collect --nats nats://nats1:4222 --db /var/lib/hookscope/hookscope.duckdb --metrics 127.0.0.1:9464
    """
    try:
        _run(_settings(config, **opts), once)
    except _ERRORS as exc:
        raise click.ClickException(str(exc))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", metavar="FILE", help=f"DuckDB file to (re)create [env HOOKSCOPE_DB; default {DEFAULT_DB}]")
@click.option("--archive", metavar="DIR", help="Parquet archive [default <db dir>/archive]")
@click.option("--from", "source", type=click.Choice(["archive", "stream"]), default="archive", show_default=True,
              help="rebuild from the Parquet archive or by re-reading the JetStream stream")
@click.option("--nats", metavar="URL", help="NATS URL for --from stream [env HOOKSCOPE_NATS_URL]")
@_auth_opts
@click.option("--write-archive", is_flag=True, help="with --from stream: also write the Parquet archive "
              "(into --archive)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--config", "config", metavar="FILE", help="hookscope.toml ([collector] section)")
def rebuild(db, archive, source, nats, write_archive, quiet, config, **auth):
    """Rebuild the DuckDB store from the Parquet archive or from the stream.

    Writes a new file and renames it over --db when complete; stop the
    collector that owns --db first (DuckDB allows one writer per file).

    Example:

        hookscope rebuild --db /var/lib/hookscope/hookscope.duckdb --from archive
    """
    from collector import rebuild as rb
    s = _settings(config, db=db, archive=archive, nats=nats, **auth)
    try:
        if source == "archive":
            counts = rb.from_archive(s["archive"], s["db"], progress=not quiet)
        else:
            if not s.get("nats"):
                raise click.ClickException("--from stream needs --nats URL (or HOOKSCOPE_NATS_URL)")
            from collector.config import NatsAuth
            counts = rb.from_stream(s["nats"], s["db"], s["archive"] if write_archive else None,
                                    progress=not quiet, auth=NatsAuth(**_auth(s)))
    except _ERRORS as exc:
        raise click.ClickException(str(exc))
    click.echo(" ".join(f"{t}={n}" for t, n in counts.items()))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@_options
@click.option("--host", default="127.0.0.1", show_default=True, help="dashboard bind address")
@click.option("--port", type=int, default=8080, show_default=True, help="dashboard port (0: any free)")
@click.option("--token", metavar="TOKEN", help="dashboard bearer token [env HOOKSCOPE_DASHBOARD_TOKEN]")
def serve(host, port, token, config, **opts):
    """Single machine: embedded nats-server + collector + dashboard in one command.

    Agents publish to the embedded server (port 4222 by default); the
    dashboard reads the store's read-only snapshot while the collector writes.

    Example:

        hookscope serve --db /var/lib/hookscope/hookscope.duckdb --port 8080
    """
    s = _settings(config, **opts)
    holder = {}

    def start_dashboard(url):
        try:
            from dashboards.server import make_server
        except ImportError as exc:
            click.echo(f"dashboard not available in this installation ({exc}); collecting only", err=True)
            return
        try:
            os.makedirs(s["archive"], exist_ok=True)
            srv = make_server(db=s["db"], archive=s["archive"], host=host, port=port, token=token)
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

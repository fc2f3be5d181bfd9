"""``hookscope collect | rebuild``: a thin click layer over the collector library.

``hookscope serve`` (collector + dashboard) is dashboards.serve: collector must
not import dashboards; it reuses the options and ``_run`` defined here.

Settings resolve once, here, by click: option, then environment variable
(each option's ``envvar=``, shown in ``-h``), then the ``[collector]`` section
of the config file (``emitter.config.load_config``), which an eager
``--config`` turns into the command's ``default_map``, then the default.  The
NATS password alone is never an option (it would show in ``ps``).
"""

from __future__ import annotations

import os

import click

from collector.config import DEFAULT_MEMORY_LIMIT
from collector.errors import CollectorError

try:
    from emitter import EmitterError  # NATS connection errors come from emitter.natsio
except ImportError:  # pragma: no cover
    EmitterError = CollectorError
_ERRORS = (CollectorError, EmitterError)

DEFAULT_DB = "/var/lib/hookscope/hookscope.duckdb"
_AUTH = ("creds", "nkey", "user", "tls_ca", "tls_cert", "tls_key")
_SECTION_KEYS = {"nats", "db", "archive", "metrics", "name", "batch", "replicas",
                 "snapshot_interval", "nats_port", "ack_wait", "memory_limit", "password", *_AUTH}
_SECTION = "hookscope.collector_section"
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


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


def _load_config(ctx, param, value):
    """Eager ``--config`` callback: the ``[collector]`` section becomes the
    command's ``default_map``, so click resolves option > environment >
    config file > default for every option.  Each value is checked here with
    its option's type, so a bad one names the file and the key."""
    sec = _section(value)
    ctx.meta[_SECTION] = sec
    by_name = {p.name: p for p in ctx.command.params}
    dm = {}
    for key, v in sec.items():
        opt = by_name.get(key)
        if opt is None:  # password (never an option), or a key another command uses
            continue
        try:
            opt.type_cast_value(ctx, v)
        except click.BadParameter as exc:
            from emitter.config import config_path
            raise click.ClickException(f"hookscope config {config_path(value)[0]}: [collector] {key} = {v!r}: "
                                       f"{exc.message}") from None
        dm[key] = v
    ctx.default_map = {**(ctx.default_map or {}), **dm}
    return value


def _settings(ctx, params):
    """Derived values on top of what click resolved (option > env > config > default)."""
    s = dict(params)
    sec = ctx.meta.get(_SECTION, {})
    s["db"] = os.path.abspath(s.get("db") or DEFAULT_DB)
    if "archive" in s:
        s["archive"] = os.path.abspath(s["archive"]) if s.get("archive") else os.path.join(
            os.path.dirname(s["db"]), "archive")
    # never a command-line option (it would show in ps): environment or config only,
    # and only for a user (an agent's HOOKSCOPE_NATS_PASSWORD must not leak in)
    s["password"] = (os.environ.get("HOOKSCOPE_NATS_PASSWORD") or sec.get("password")) if s.get("user") else None
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


def _opt(*decls, env=None, **kw):
    """An option whose environment variable click reads (and help shows)."""
    if env:
        kw.update(envvar=env, show_envvar=True)
    return click.option(*decls, **kw)


_auth_options = [
    _opt("--creds", metavar="FILE", env="HOOKSCOPE_NATS_CREDS", help="NATS .creds file"),
    _opt("--nkey", metavar="FILE", env="HOOKSCOPE_NATS_NKEY", help="NATS nkey seed file of the collector user"),
    _opt("--user", metavar="USER", env="HOOKSCOPE_NATS_USER", help="NATS user; the password comes from "
         "the environment variable HOOKSCOPE_NATS_PASSWORD or [collector] password, never an option"),
    _opt("--tls-ca", "tls_ca", metavar="FILE", env="HOOKSCOPE_NATS_TLS_CA", help="CA bundle to verify "
         "the NATS server"),
    _opt("--tls-cert", "tls_cert", metavar="FILE", env="HOOKSCOPE_NATS_TLS_CERT",
         help="client certificate for mutual TLS"),
    _opt("--tls-key", "tls_key", metavar="FILE", env="HOOKSCOPE_NATS_TLS_KEY", help="client key for mutual TLS"),
]

_config_option = _opt("--config", "config", metavar="FILE", env="HOOKSCOPE_CONFIG", is_eager=True,
                      expose_value=False, callback=_load_config,
                      show_default="/etc/hookscope/hookscope.toml, if present",
                      help="hookscope.toml: its [collector] section gives defaults for these options")
_db_option = _opt("--db", metavar="FILE", env="HOOKSCOPE_DB", default=DEFAULT_DB, help="live DuckDB file")
_archive_option = _opt("--archive", metavar="DIR", env="HOOKSCOPE_ARCHIVE", show_default="<db dir>/archive",
                       help="Parquet archive directory")

_common = [
    _opt("--nats", "nats", metavar="URL", env="HOOKSCOPE_NATS_URL", show_default="the embedded "
         "nats-server, started next to the DB", help="NATS server(s), comma-separated"),
    _db_option,
    _archive_option,
    *_auth_options,
    _opt("--name", metavar="NAME", env="HOOKSCOPE_COLLECTOR_NAME", show_default="short hostname",
         help="collector instance name (ingest_state key, archive file prefix); unique per instance"),
    _opt("--batch", type=click.IntRange(1, 10000), default=2048, help="messages per fetch/commit"),
    _opt("--replicas", type=click.IntRange(1, 5), default=1, help="stream replicas when creating streams "
         "(3 on a 3-node cluster)"),
    _opt("--snapshot-interval", "snapshot_interval", type=float, default=1.0,
         help="seconds between read-only snapshots at most"),
    _opt("--metrics", metavar="HOST:PORT", env="HOOKSCOPE_COLLECTOR_METRICS", help="serve Prometheus /metrics here"),
    _opt("--nats-port", "nats_port", type=click.IntRange(0, 65535), default=4222,
         help="port of the embedded nats-server, when there is no --nats (0: any free port)"),
    _opt("--ack-wait", "ack_wait", type=float, default=60.0, help="seconds before JetStream redelivers a "
         "message fetched but not acked (e.g. by a killed collector)"),
    _opt("--memory-limit", "memory_limit", metavar="SIZE", env="HOOKSCOPE_COLLECTOR_MEMORY_LIMIT",
         default=DEFAULT_MEMORY_LIMIT, show_default=f"half the RAM or of the cgroup's memory limit, "
         f"at least 1 GiB: {DEFAULT_MEMORY_LIMIT} here",
         help="DuckDB memory limit, e.g. 512MB, 2GB; 'none': DuckDB's own default, 80% of RAM"),
    _config_option,
]


def _options(fn):
    for opt in reversed(_common):
        fn = opt(fn)
    return fn


def _auth_opts(fn):
    for opt in reversed(_auth_options):
        fn = opt(fn)
    return fn


def _embedded_port_check(ctx, s):
    """--nats-port configures the embedded server, which --nats replaces: refuse both."""
    from click.core import ParameterSource
    if s.get("nats") and ctx.get_parameter_source("nats_port") in (ParameterSource.COMMANDLINE,
                                                                   ParameterSource.ENVIRONMENT):
        raise click.UsageError("--nats-port is the embedded nats-server's port; with --nats URL "
                               "there is no embedded server: drop one of them")


@click.command(context_settings=CONTEXT)
@_options
@click.option("--once", is_flag=True, help="exit when the stream has been drained (idle for 1 s)")
@click.pass_context
def collect(ctx, once, **opts):
    """Consume JetStream into the DuckDB store and the Parquet archive.

    Acks each message only after its rows are committed; redelivery and
    replays insert nothing twice.  SIGTERM finishes the batch, acks, closes.

    \b
    Example:
        hookscope collect --nats nats://nats1:4222 --db /var/lib/hookscope/hookscope.duckdb --metrics 127.0.0.1:9464
    """
    s = _settings(ctx, opts)
    _embedded_port_check(ctx, s)
    try:
        _run(s, once)
    except _ERRORS as exc:
        raise click.ClickException(str(exc))


@click.command(context_settings=CONTEXT)
@_db_option
@_archive_option
@click.option("--from", "source", type=click.Choice(["archive", "stream"]), default="archive",
              help="rebuild from the Parquet archive or by re-reading the JetStream stream")
@_opt("--nats", metavar="URL", env="HOOKSCOPE_NATS_URL", help="NATS URL for --from stream")
@_auth_opts
@click.option("--write-archive", is_flag=True, help="with --from stream: also write the Parquet archive "
              "(into --archive)")
@click.option("--quiet", is_flag=True, help="no progress bar")
@_config_option
@click.pass_context
def rebuild(ctx, source, write_archive, quiet, **opts):
    """Rebuild the DuckDB store from the Parquet archive or from the stream.

    Writes a new file and renames it over --db when complete; stop the
    collector that owns --db first (DuckDB allows one writer per file).

    \b
    Example:
        hookscope rebuild --db /var/lib/hookscope/hookscope.duckdb --from archive
    """
    from collector import rebuild as rb
    s = _settings(ctx, opts)
    if source == "archive" and write_archive:
        raise click.UsageError("--write-archive goes with --from stream (--from archive reads the archive)")
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


@click.command(context_settings=CONTEXT)
@_db_option
@_archive_option
@click.option("--today", "include_today", is_flag=True,
              help="also compact today's (UTC) partitions, which a running collector is still writing")
@click.option("--quiet", is_flag=True, help="print only the summary line")
@_config_option
@click.pass_context
def compact(ctx, include_today, quiet, **opts):
    """Rewrite each closed day's archive partition into one sorted file.

    Each (table, date, cluster) directory's small Parquet files become one
    file, deduplicated on the table's key, sorted by (node, time), with row
    groups sized for pruning.  Safe beside a running collector and readers,
    and after a kill -9 (run it again to finish).  Run it daily from cron.

    \b
    Example:
        hookscope compact --archive /var/lib/hookscope/archive
    """
    from collector.compact import compact as run_compact
    s = _settings(ctx, opts)

    def tell(r):
        if not quiet:
            click.echo(f"{r['dir']}: {r['inputs']} files -> 1 ({r['rows']} rows)")
    try:
        done = run_compact(s["archive"], include_today=include_today, progress=tell)
    except _ERRORS as exc:
        raise click.ClickException(str(exc))
    click.echo(f"compacted {len(done)} partitions, {sum(r['inputs'] for r in done)} files")

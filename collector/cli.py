"""``hookscope collect | rebuild | compact``: a thin click layer over the collector library.

``hookscope serve`` (collector + dashboard) is dashboards.serve: collector must
not import dashboards; it reuses the options and ``_run`` defined here.

Settings are resolved once, by the library (collector.config.resolve_settings):
option, then environment variable, then the ``[collector]`` section of the
config file, then the default, and validated there.  Here each option only
declares its ``envvar=`` (shown in ``-h``) and its default (from
collector.config.KEYS, for the help); what the user typed on the command
line is passed on as the argument, the library resolves the rest.  The
eager ``--config`` also turns the library's checked ``[collector]`` section
into the command's ``default_map``, so ``ctx.params`` show what will be used.
The NATS password alone is never an option (it would show in ``ps``).
"""

from __future__ import annotations

import os

import click
from click.core import ParameterSource

from collector import config as cc
from collector.config import DEFAULT_DB, DEFAULT_MEMORY_LIMIT
from collector.errors import CollectorError

try:
    from emitter import EmitterError  # NATS connection errors come from emitter.natsio
except ImportError:  # pragma: no cover
    EmitterError = CollectorError
_ERRORS = (CollectorError, EmitterError)

_SECTION = "hookscope.collector_section"
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True}


def _load_config(ctx, param, value):
    """Eager ``--config`` callback: the library reads and checks the
    ``[collector]`` section (a bad value names the file and the key) and it
    becomes the command's ``default_map``."""
    try:
        path, sec = cc.load_section(value)
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None
    ctx.meta[_SECTION] = (path, sec)
    names = {p.name for p in ctx.command.params}
    ctx.default_map = {**(ctx.default_map or {}), **{k: v for k, v in sec.items() if k in names}}
    return value


def _settings(ctx, params) -> cc.CollectorSettings:
    """The library's resolution of what was typed: an option on the command
    line is the argument; the rest (environment, which click also read for
    ``-h`` and ``ctx.params``, ``[collector]``, default) the library resolves."""
    args = {k: v for k, v in params.items()
            if k in cc.SECTION_KEYS and ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    try:
        return cc.resolve_settings(args, section=ctx.meta.get(_SECTION))
    except cc.SettingsConflict as exc:
        raise click.UsageError(str(exc)) from None
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None


def _embedded(db, port, announce=True):
    from collector.embedded import NatsServer
    srv = NatsServer(store_dir=os.path.join(os.path.dirname(db), "nats"), port=port)
    srv.start()
    if announce:
        click.echo(f"embedded nats-server (JetStream in {srv.store_dir}) listening on {srv.url}", err=True)
    return srv


def _run(s: cc.CollectorSettings, once, with_dashboard=None):
    from collector.consumer import run_collector
    server = None
    url = s.nats
    if not url:
        server = _embedded(s.db, s.nats_port)
        url = server.url
    try:
        cfg = s.collector_config(url)
        if with_dashboard is not None:
            with_dashboard(url)
        stats = run_collector(cfg, once=once, metrics_addr=s.metrics)
    finally:
        if server is not None:
            server.stop()  # SIGTERM: nats-server flushes JetStream and exits cleanly
    dead = sum(stats.get("dead_letters", {}).values())
    click.echo(f"stored {stats['messages']} messages ({stats['spans']} spans, {stats['gpu_samples']} GPU "
               f"samples), {dead} dead-lettered, into {s.db}", err=True)


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
    _opt("--batch", type=click.IntRange(1, 10000), default=cc.KEYS["batch"][1], help="messages per fetch/commit"),
    _opt("--replicas", type=click.IntRange(1, 5), default=cc.KEYS["replicas"][1], help="stream replicas when creating streams "
         "(3 on a 3-node cluster)"),
    _opt("--snapshot-interval", "snapshot_interval", type=float, default=cc.KEYS["snapshot_interval"][1],
         help="seconds between read-only snapshots at most"),
    _opt("--metrics", metavar="HOST:PORT", env="HOOKSCOPE_COLLECTOR_METRICS", help="serve Prometheus /metrics here"),
    _opt("--nats-port", "nats_port", type=click.IntRange(0, 65535), default=cc.KEYS["nats_port"][1],
         help="port of the embedded nats-server, when there is no --nats (0: any free port)"),
    _opt("--ack-wait", "ack_wait", type=float, default=cc.KEYS["ack_wait"][1], help="seconds before JetStream redelivers a "
         "message fetched but not acked (e.g. by a killed collector)"),
    _opt("--memory-limit", "memory_limit", metavar="SIZE", env="HOOKSCOPE_COLLECTOR_MEMORY_LIMIT",
         default=DEFAULT_MEMORY_LIMIT, show_default=f"half the RAM or of the cgroup's memory limit, "
         f"at least 1 GiB: {DEFAULT_MEMORY_LIMIT} here",
         help="DuckDB memory limit, e.g. 512MB, 2GB; 'none': DuckDB's own default, 80% of RAM"),
    _opt("--compact-files", "compact_files", type=click.IntRange(0, 100000), default=cc.KEYS["compact_files"][1],
         help="automatic compaction: merge an open (table, day, cluster) partition's files once it holds "
              "more than this many (0: off; `hookscope compact` by hand)"),
    _opt("--compact-grace", "compact_grace", type=click.FloatRange(0, 604800), default=cc.KEYS["compact_grace"][1],
         help="seconds after a UTC midnight before the collector compacts that day into one file"),
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
            counts = rb.from_archive(s.archive, s.db, progress=not quiet)
        else:
            if not s.nats:
                raise click.ClickException("--from stream needs --nats URL (or HOOKSCOPE_NATS_URL)")
            counts = rb.from_stream(s.nats, s.db, s.archive if write_archive else None,
                                    progress=not quiet, auth=s.checked_auth())
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
        done = run_compact(s.archive, include_today=include_today, progress=tell)
    except _ERRORS as exc:
        raise click.ClickException(str(exc))
    click.echo(f"compacted {len(done)} partitions, {sum(r['inputs'] for r in done)} files")

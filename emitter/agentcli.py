"""``hookscope agent``: the click layer over emitter.agent."""

from __future__ import annotations

import os
import signal
import sys

import click

from emitter import EmitterError
from emitter.config import JOURNAL_ENV, JOURNAL_ENV_OLD


def _opt(*decls, env=None, **kw):
    """An option whose environment variable click reads (and help shows)."""
    if env:
        kw.update(envvar=env, show_envvar=True)
    return click.option(*decls, **kw)


#: the runner's name for the journal directory is the one name; the agent's old
#: HOOKSCOPE_JOURNAL is still read (after it), with a deprecation note
#: (the order: emitter.config.journal_dir)


@click.command("agent", context_settings={"help_option_names": ["-h", "--help"]})
@_opt("--nats", "nats", metavar="URL", env="HOOKSCOPE_NATS_URL",
      help="NATS server URL(s), comma-separated [default: [agent] nats or nats://127.0.0.1:4222]")
@_opt("--creds", type=click.Path(dir_okay=False), env="HOOKSCOPE_NATS_CREDS", help="NATS .creds file")
@_opt("--nkey", type=click.Path(dir_okay=False), env="HOOKSCOPE_NATS_NKEY", help="NATS nkey seed file")
@_opt("--user", env="HOOKSCOPE_NATS_USER", help="NATS user; the password comes from the environment "
      "variable HOOKSCOPE_NATS_PASSWORD or [agent] password, never an option")
@_opt("--tls-ca", type=click.Path(dir_okay=False), env="HOOKSCOPE_NATS_TLS_CA",
      help="CA bundle to verify the NATS server")
@_opt("--tls-cert", type=click.Path(dir_okay=False), env="HOOKSCOPE_NATS_TLS_CERT",
      help="client certificate (mutual TLS)")
@_opt("--tls-key", type=click.Path(dir_okay=False), env="HOOKSCOPE_NATS_TLS_KEY", help="client key (mutual TLS)")
@_opt("--journal", type=click.Path(file_okay=False), env=[JOURNAL_ENV, JOURNAL_ENV_OLD],
      help=f"journal directory, as 'hookscope run' ({JOURNAL_ENV_OLD} is deprecated) "
           "[default: [agent] journal, [runner] journal_dir or /var/spool/hookscope/journal]")
@click.option("--once", is_flag=True, help="ship what is in the journal now, then exit (1 if some stayed)")
@_opt("--node", env="HOOKSCOPE_NODE", help="node name in subjects/metrics [default: [runner] node or "
      "the short hostname]")
@_opt("--cluster", env="HOOKSCOPE_CLUSTER", help="cluster name for metrics [default: [runner] cluster or "
      "SLURM_CLUSTER_NAME]")
@click.option("--replicas", type=click.IntRange(1, 5), help="stream replicas when creating the streams "
              "(3 on a 3-node cluster) [default: 1]")
@click.option("--no-create-streams", is_flag=True, default=None,
              help="only publish; never create or update streams (the collector owns them)")
@_opt("--gpu", type=click.Choice(["auto", "nvml", "amdsmi", "replay", "none"]), env="HOOKSCOPE_GPU",
      help="GPU backend [default: auto]")
@_opt("--gpu-replay", type=click.Path(dir_okay=False, exists=True), env="HOOKSCOPE_GPU_REPLAY",
      help="recorded nvidia-smi -q -x XML or amd-smi metric --json to replay (--gpu replay)")
@click.option("--gpu-interval", "gpu_interval_s", type=float, help="seconds between GPU samples [default: 10]")
@click.option("--gpu-timeout", "gpu_timeout_s", type=float, help="deadline of one GPU library call [default: 2]")
@click.option("--dcgm-job-map-dir", type=click.Path(file_okay=False),
              help="also write dcgm-exporter's HPC job-mapping dir (a file per GPU index)")
@click.option("--node-state-interval", "node_state_interval_s", type=float,
              help="seconds between `scontrol show node` checks that record drain/down as node_event "
                   "[default: 0, off]")
@_opt("--config", "config_path", type=click.Path(dir_okay=False), env="HOOKSCOPE_CONFIG",
      help="config file; its [agent] section (and [runner] journal_dir, node, cluster) gives the defaults, "
           "checked by the agent's settings object [default: /etc/hookscope/hookscope.toml, if present]")
def agent(nats, creds, nkey, user, tls_ca, tls_cert, tls_key, journal, once, node, cluster, replicas,
          no_create_streams, gpu, gpu_replay, gpu_interval_s, gpu_timeout_s, dcgm_job_map_dir,
          node_state_interval_s, config_path):
    """Ship the node journal as OpenTelemetry spans, and GPU metrics, over NATS JetStream.

    Every complete (or abandoned) hook file becomes one OTLP ExportTraceServiceRequest
    on hookscope.spans.<cluster>.<node>; a file is deleted only after the JetStream ack.

    \b
    Example:
        hookscope agent --nats nats://collector:4222 --nkey /etc/hookscope/node.nk
        hookscope agent --once --journal /var/spool/hookscope/journal --gpu none
    """
    from emitter.agent import Agent, AgentSettings
    from emitter.config import load_config

    if once and node_state_interval_s:
        raise click.UsageError("--node-state-interval watches the node while the agent runs; "
                               "--once ships and exits: drop one of them")
    if journal and os.environ.get(JOURNAL_ENV_OLD) == journal and not os.environ.get(JOURNAL_ENV):
        click.echo(f"hookscope agent: {JOURNAL_ENV_OLD} is deprecated; set {JOURNAL_ENV} "
                   "(the runner's name for the same directory)", err=True)
    try:
        cfg = load_config(config_path)
        settings = AgentSettings.resolve(
            cfg, nats=nats, creds=creds, nkey=nkey, user=user, tls_ca=tls_ca, tls_cert=tls_cert,
            tls_key=tls_key, journal=journal, node=node, cluster=cluster, replicas=replicas,
            create_streams=False if no_create_streams else None, gpu=gpu, gpu_replay=gpu_replay,
            gpu_interval_s=gpu_interval_s, gpu_timeout_s=gpu_timeout_s, dcgm_job_map_dir=dcgm_job_map_dir,
            node_state_interval_s=node_state_interval_s)
        _check_trusted(settings)
        if gpu_replay and settings.gpu != "replay":
            raise click.UsageError(f"--gpu-replay is read only by the replay backend, and the backend "
                                   f"is {settings.gpu!r}: add --gpu replay")
    except EmitterError as exc:
        msg = str(exc)
        if msg.startswith("config:"):
            from emitter.config import config_path as _cp

            msg = f"hookscope config {_cp(config_path)[0]}:{msg[len('config:'):]}"
        raise click.ClickException(msg) from None
    a = Agent(settings)

    def _term(signum, frame):
        a.stop()

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)
    code = a.run(once=once)
    st = a.stats
    if once or st.files:
        sys.stderr.write(f"hookscope agent: shipped {st.files} file(s), {st.records} record(s) "
                         f"({st.duplicates} already in the stream), {st.metric_rounds} GPU round(s), "
                         f"{st.heads} chain head(s), {st.stuck} file(s) too large to ship\n")
    sys.exit(code)


def _check_trusted(settings) -> None:
    """As root, refuse credential files and a journal dir a non-root user owns
    or can write (emitter.config.check_trusted names the file and the bit):
    root must not obey, or ship as evidence, what a user could have planted."""
    from emitter.config import check_trusted

    settings.auth.check_trusted()  # the one NatsAuth check, as the collector's
    check_trusted(settings.journal, "journal directory")

"""``hookscope agent``: the click layer over emitter.agent."""

from __future__ import annotations

import signal
import sys

import click

from emitter import EmitterError


@click.command("agent")
@click.option("--nats", "nats", metavar="URL", help="NATS server URL(s), comma-separated "
              "[env HOOKSCOPE_NATS_URL; default nats://127.0.0.1:4222]")
@click.option("--creds", type=click.Path(dir_okay=False), help="NATS .creds file [env HOOKSCOPE_NATS_CREDS]")
@click.option("--nkey", type=click.Path(dir_okay=False), help="NATS nkey seed file [env HOOKSCOPE_NATS_NKEY]")
@click.option("--user", help="NATS user (password from HOOKSCOPE_NATS_PASSWORD or [agent] password)")
@click.option("--tls-ca", type=click.Path(dir_okay=False), help="CA bundle to verify the NATS server")
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="client certificate (mutual TLS)")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="client key (mutual TLS)")
@click.option("--journal", type=click.Path(file_okay=False), help="journal directory [env HOOKSCOPE_JOURNAL; "
              "default [runner] journal_dir or /var/spool/hookscope/journal]")
@click.option("--once", is_flag=True, help="ship what is in the journal now, then exit (1 if some stayed)")
@click.option("--node", help="node name in subjects/metrics (default: short hostname)")
@click.option("--cluster", help="cluster name for metrics (default: SLURM_CLUSTER_NAME)")
@click.option("--replicas", type=int, help="stream replicas when creating the streams (3 on a 3-node cluster)")
@click.option("--no-create-streams", is_flag=True, default=None,
              help="only publish; never create or update streams (the collector owns them)")
@click.option("--gpu", type=click.Choice(["auto", "nvml", "amdsmi", "replay", "none"]),
              help="GPU backend [env HOOKSCOPE_GPU; default auto]")
@click.option("--gpu-replay", type=click.Path(dir_okay=False, exists=True),
              help="recorded nvidia-smi -q -x XML or amd-smi metric --json to replay (--gpu replay)")
@click.option("--gpu-interval", "gpu_interval_s", type=float, help="seconds between GPU samples (default 10)")
@click.option("--gpu-timeout", "gpu_timeout_s", type=float, help="deadline of one GPU library call (default 2)")
@click.option("--dcgm-job-map-dir", type=click.Path(file_okay=False),
              help="also write dcgm-exporter's HPC job-mapping dir (a file per GPU index)")
@click.option("--node-state-interval", "node_state_interval_s", type=float,
              help="seconds between `scontrol show node` checks that record drain/down as node_event (0: off)")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="config file "
              "[env HOOKSCOPE_CONFIG; default /etc/hookscope/hookscope.toml]")
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

    try:
        cfg = load_config(config_path)
        settings = AgentSettings.resolve(
            cfg, nats=nats, creds=creds, nkey=nkey, user=user, tls_ca=tls_ca, tls_cert=tls_cert,
            tls_key=tls_key, journal=journal, node=node, cluster=cluster, replicas=replicas,
            create_streams=False if no_create_streams else None, gpu=gpu, gpu_replay=gpu_replay,
            gpu_interval_s=gpu_interval_s, gpu_timeout_s=gpu_timeout_s, dcgm_job_map_dir=dcgm_job_map_dir,
            node_state_interval_s=node_state_interval_s)
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
                         f"({st.duplicates} already in the stream), {st.metric_rounds} GPU round(s)\n")
    sys.exit(code)

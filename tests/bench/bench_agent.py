"""Agent budgets, measured (not part of `make test`).

1. Burst: N journal records (default 10,000 = 1,000 hook files of 10 records)
   shipped by `hookscope agent --once` to a local nats-server: records/s and
   peak RSS, side by side with a bare nats-py JetStream publish loop that
   sends the same number of messages of the same size, one PubAck at a time.
2. Idle: a long-running agent with 8 replayed H100s sampled every 10 s and an
   empty journal: RSS and CPU share of one core over --idle seconds.

Usage: .venv/bin/python tests/bench/bench_agent.py [--records 10000] [--idle 60] [--quick]
Goals (issue 3): idle < 60 MB RSS and < 1 % of a core.
"""

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # run as a script: the repo's packages and tests.*

from tests.agent.agentkit import journal_files, write_hooks_fast  # noqa: E402

from collector.embedded import NatsServer  # noqa: E402
from emitter import contract as c  # noqa: E402
from emitter import natsio  # noqa: E402

NV = ROOT / "emitter" / "fixtures" / "gpu" / "nvidia-smi-q-x-8xH100.xml"
AGENT = [sys.executable, "-m", "emitter.cli", "agent"]


def env():
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT)
    return e


async def _bare_loop(url, payloads):
    import nats

    nc = await nats.connect(url)
    js = nc.jetstream()
    t = time.perf_counter()
    for i, p in enumerate(payloads):
        await js.publish(f"hookscope.spans.bench.bare{i % 7}", p, headers={c.HDR_MSG_ID: f"bare-{i}"})
    dt = time.perf_counter() - t
    await nc.close()
    return dt


async def _streams(url):
    nc = await natsio.connect(natsio.NatsOptions(servers=url))
    await natsio.ensure_streams(nc.jetstream())
    await nc.close()


def burst(records, tmp):
    per_file = 10  # hook_started + 4 x (script_started, script_ended) + hook_ended
    files = records // per_file
    j = Path(tmp) / "journal"
    write_hooks_fast(j, files, scripts=4)
    sizes = [os.path.getsize(j / f) for f in journal_files(j)]
    empty = Path(tmp) / "empty"
    empty.mkdir()
    with NatsServer(store_dir=Path(tmp) / "nats") as srv:
        asyncio.run(_streams(srv.url))
        t = time.perf_counter()  # start-up alone: --once on an empty journal
        subprocess.run(AGENT + ["--once", "--nats", srv.url, "--journal", str(empty), "--gpu", "none"],
                       env=env(), check=True, capture_output=True)
        startup = time.perf_counter() - t
        t = time.perf_counter()
        p = subprocess.Popen(AGENT + ["--once", "--nats", srv.url, "--journal", str(j), "--gpu", "none"],
                             env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, ru = os.wait4(p.pid, 0)
        dt_agent = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        err = p.stderr.read().decode()
        assert p.returncode == 0 and not journal_files(j), err
        peak_mb = ru.ru_maxrss / 1024
        # the baseline sends messages of the size the agent sent (OTLP is ~1.6x the JSON)
        payloads = [os.urandom(int(s * 1.6)) for s in sizes]
        dt_bare = asyncio.run(_bare_loop(srv.url, payloads))
    print(f"burst: {records} records in {files} hook files")
    print(f"  hookscope agent --once : {records / dt_agent:10.0f} records/s  ({dt_agent:.2f} s incl. "
          f"start-up, peak RSS {peak_mb:.1f} MB)")
    print(f"  bare nats-py js.publish: {records / dt_bare:10.0f} records/s  ({dt_bare:.2f} s, "
          f"{files} msgs, one ack each)")
    ship = max(dt_agent - startup, 1e-6)
    print(f"  same, start-up excluded: {records / ship:10.0f} records/s  (start-up {startup:.2f} s: "
          "imports, connect, stream check)")
    print(f"  ratio agent/bare       : {dt_bare / dt_agent:10.2f}  (start-up excluded: {dt_bare / ship:.2f})")
    return peak_mb


def _proc_stats(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return cpu, rss


def idle(seconds, tmp):
    j = Path(tmp) / "idle-journal"
    with NatsServer(store_dir=Path(tmp) / "nats-idle") as srv:
        p = subprocess.Popen(AGENT + ["--nats", srv.url, "--journal", str(j), "--gpu", "replay",
                                      "--gpu-replay", str(NV), "--gpu-interval", "10"],
                             env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(5)  # start-up and the first GPU round
            cpu0, _ = _proc_stats(p.pid)
            t0 = time.monotonic()
            peak = 0.0
            while time.monotonic() - t0 < seconds:
                time.sleep(1)
                peak = max(peak, _proc_stats(p.pid)[1])
            cpu1, rss = _proc_stats(p.pid)
            dt = time.monotonic() - t0
        finally:
            p.terminate()
            p.wait(10)
    share = 100 * (cpu1 - cpu0) / dt
    print(f"idle: {seconds}s with 8 replayed GPUs sampled every 10 s, empty journal polled every 1 s")
    print(f"  RSS {rss:.1f} MB (peak {peak:.1f} MB, goal < 60)   CPU {share:.2f} % of a core (goal < 1)")
    return rss, share


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=10_000)
    ap.add_argument("--idle", type=float, default=60.0, help="seconds of idle measurement")
    ap.add_argument("--quick", action="store_true", help="--records 2000 --idle 15")
    a = ap.parse_args()
    if a.quick:
        a.records, a.idle = 2000, 15.0
    with tempfile.TemporaryDirectory(prefix="bench-agent-") as tmp:
        burst(a.records, tmp)
        idle(a.idle, tmp)
    print(f"(this process: max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")


if __name__ == "__main__":
    main()

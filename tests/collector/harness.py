"""Helpers for the collector's end-to-end tests: publish, run a collector
in-process or as a real process, read and compare stores."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from collector import schema
from collector.config import CollectorConfig
from collector.consumer import Collector
from emitter import contract as C
from emitter.natsio import ensure_streams

ROOT = Path(__file__).resolve().parents[2]
HOOKSCOPE = [sys.executable, "-m", "emitter.cli"]


async def _publish(url, msgs, replicas=1, headers_extra=None):
    import nats

    nc = await nats.connect(servers=url.split(","), connect_timeout=3, max_reconnect_attempts=5,
                            reconnect_time_wait=0.3)
    try:
        js = nc.jetstream(timeout=10)
        for attempt in range(10):  # a cluster may be re-electing a leader
            try:
                await ensure_streams(js, replicas=replicas)
                break
            except Exception:
                if attempt == 9:
                    raise
                await asyncio.sleep(0.5)
        acks = []
        for m in msgs:
            subj, mid, payload = m[0], m[1], m[2]
            hdrs = {C.HDR_SCHEMA: str(C.SCHEMA_VERSION)}
            if mid:
                hdrs[C.HDR_MSG_ID] = mid
            if len(m) > 3 and m[3]:
                hdrs.update(m[3])
            for attempt in range(50):
                try:
                    acks.append(await js.publish(subj, payload, headers=hdrs, timeout=5))
                    break
                except Exception:
                    if attempt == 49:
                        raise
                    await asyncio.sleep(0.2)
        return acks
    finally:
        await nc.close()


def publish(url, msgs, replicas=1):
    """Publish (subject, msg_id, payload[, headers]) tuples, waiting for each PubAck."""
    return asyncio.run(_publish(url, msgs, replicas))


def collect_once(url, db, archive, instance="t1", durable=C.DURABLE_CONSUMER, idle=1.0, **kw):
    """Run a collector in-process until the stream is drained; returns its metrics."""
    cfg = CollectorConfig(nats_url=url, db=str(db), archive=str(archive) if archive else None,
                          instance=instance, durable=durable, fsync=False, **kw)
    col = Collector(cfg)

    async def go():
        try:
            return await col.run(once=True, idle_exit=idle)
        finally:
            await col.close_nats()

    try:
        return asyncio.run(go())
    finally:
        col.close()


def start_collect_process(url, db, archive, name="p1", extra=(), metrics=None):
    cmd = HOOKSCOPE + ["collect", "--nats", url, "--db", str(db), "--archive", str(archive),
                       "--name", name, "--ack-wait", "5"] + list(extra)
    if metrics:
        cmd += ["--metrics", metrics]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def counts(db) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in schema.TABLES}
    finally:
        con.close()


def no_duplicates(db) -> None:
    con = duckdb.connect(str(db), read_only=True)
    try:
        for t, keys in schema.KEYS.items():
            if t == "raw":
                continue
            k = ", ".join(keys)
            n, d = con.execute(f"SELECT count(*), (SELECT count(*) FROM (SELECT DISTINCT {k} FROM {t})) "
                               f"FROM {t}").fetchone()
            assert n == d, f"{t}: {n} rows, {d} distinct keys"
    finally:
        con.close()


def compare_stores(a, b, tables=None) -> dict:
    """{table: (rows only in a, rows only in b)} - empty dict when identical."""
    con = duckdb.connect()
    diffs = {}
    try:
        con.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
        con.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
        for t in tables or [t for t in schema.TABLES if t != "ingest_state"]:
            x = con.execute(f"SELECT count(*) FROM (SELECT * FROM a.{t} EXCEPT ALL SELECT * FROM b.{t})").fetchone()[0]
            y = con.execute(f"SELECT count(*) FROM (SELECT * FROM b.{t} EXCEPT ALL SELECT * FROM a.{t})").fetchone()[0]
            if x or y:
                diffs[t] = (x, y)
    finally:
        con.close()
    return diffs


def wait_for(pred, timeout=30.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(url, timeout=2.0) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def metric_value(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0

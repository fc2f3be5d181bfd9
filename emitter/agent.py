"""The node agent: ship the journal as OTLP spans, sample GPUs, never lose a record.

Loop: scan the journal, ship every complete or abandoned file in the node's
sequence order (one ExportTraceServiceRequest per file, published as built
by ``exporter.TraceExporter``), delete a file only after its JetStream
PubAck.  When NATS is unreachable the round stops at the first failure
(order is kept), waits with exponential backoff and tries again; the runner keeps the journal within
its bound meanwhile.  A crash between PubAck and delete re-publishes the same
``Nats-Msg-Id``, which the stream's duplicate window drops.

GPU sampling runs in its own thread behind ``gpu.base.TimedBackend``, so a
hung driver never delays span export.  Settings: ``AgentSettings.resolve``
(emitter/agentsettings.py: argument > environment > ``[agent]`` of the config
file > default; re-exported here).
"""

from __future__ import annotations

import json
import os
import random
from hashlib import sha256
import threading
import time
from collections import deque
from dataclasses import dataclass

from emitter import EmitterError
from emitter import contract as c
from emitter import agentreports, chainheads, otlp, spool
from emitter.agentsettings import AgentConfigError, AgentSettings
from emitter.exporter import JetStreamPublisher, TraceExporter, log_stderr
from emitter.fsutil import replacing
from emitter.gpu.jobs import JobMap, job_gpus
from emitter.nodestate import BAD_STATE_FLAGS, bad_flags, parse_scontrol_node  # noqa: F401 - re-exported

__all__ = ["Agent", "AgentSettings", "AgentConfigError", "Stats", "BAD_STATE_FLAGS", "bad_flags",
           "parse_scontrol_node"]

STATE_FILE = "agent-gpus.json"
#: a file too large to ship is tried again this often (the server's max_payload may be raised)
STUCK_RETRY_S = 300.0  # job map, survives agent restarts (not a journal file)


def _sha256(data: bytes) -> str:
    return sha256(data).hexdigest()


@dataclass
class Stats:
    files: int = 0
    records: int = 0
    duplicates: int = 0
    failures: int = 0
    damage_reports: int = 0
    untrusted_reports: int = 0
    metric_rounds: int = 0
    metric_dropped: int = 0
    heads: int = 0  # chain heads published
    stuck: int = 0  # files too large to ship (journal_error written, kept in the journal)


class Agent:
    def __init__(self, settings: AgentSettings, *, log=log_stderr, publisher=None):
        self.s = settings
        self.log = log
        self.publisher = publisher or JetStreamPublisher(settings.nats_options(),
                                                         create_streams=settings.create_streams,
                                                         replicas=settings.replicas, log=log)
        self.exporter = TraceExporter(self.publisher, timeout=settings.publish_timeout_s)
        self.stats = Stats()
        self.jobs = JobMap()
        self._load_state()
        self._seen: set[str] = set()
        self._reported: set[str] = set()
        self._untrusted: set[str] = set()  # reported untrusted files (usually moved away)
        self._stuck: set[str] = set()  # files too large to ship even split and cut
        self._stuck_retry_at = 0.0
        self._latest: dict[int, object] = {}  # gpu index -> latest GpuSample
        self._pending_metrics: deque = deque(maxlen=max(1, settings.metrics_backlog))
        self._stop = threading.Event()
        self._gpu_trigger = threading.Event()
        self._gpu_thread = None
        self.gpu = None
        self._outage_since = None
        self._backoff = settings.backoff_min_s
        self._cluster = settings.cluster  # "" -> learnt from the journal's records
        self._node_flags = None
        self.heads = chainheads.HeadTracker()
        self._heads_at = time.monotonic()
        try:
            self._signer = chainheads.load_signer(settings.nkey, settings.creds)
        except Exception as exc:  # noqa: BLE001 - unsigned heads still show a deleted tail
            self.log(f"chain heads will be unsigned: cannot load the NKey ({type(exc).__name__}: {exc})")
            self._signer = None

    @property
    def cluster(self) -> str:
        return self._cluster or "default"

    # ------------------------------------------------------------ state
    def _state_path(self) -> str:
        return os.path.join(self.s.journal, STATE_FILE)

    def _load_state(self) -> None:
        try:
            with open(self._state_path()) as f:
                data = json.load(f)
            self.jobs.load(data.get("gpus"))
        except (OSError, ValueError, AttributeError, TypeError):
            pass

    def _save_state(self) -> None:
        path = self._state_path()
        try:
            with replacing(path, tmp=path + ".tmp") as tmp, open(tmp, "w") as f:
                json.dump({"gpus": self.jobs.dump()}, f)
        except OSError as exc:
            self.log(f"cannot save GPU job map to {self._state_path()}: {exc.strerror}")

    # ------------------------------------------------------------ journal
    def scan(self) -> list[spool.JournalFile]:
        kw = dict(full=False, grace_s=self.s.abandon_grace_s, stale_s=self.s.stale_after_s)
        # root's journal, then each per-uid spool (its own chain): order holds within each
        files = spool.scan(self.s.journal, **kw) + agentreports.scan_user_spools(self, **kw)
        changed = False
        present = set()
        for jf in files:
            present.add(jf.path)
            if jf.path in self._seen or jf.state == spool.UNTRUSTED or jf.attested_uid:
                continue  # an untrusted or user-written file teaches us nothing (cluster, GPU jobs)
            if jf.entries and not self._cluster:
                self._cluster = str(jf.entries[0][1].get(c.R_CLUSTER) or "")
            started = jf.started
            if started is None and jf.state == spool.RUNNING:
                continue  # hook_started not written yet: look again next scan
            self._seen.add(jf.path)
            if self.jobs.observe(started):
                changed = True
        self._seen &= present
        self._reported &= present
        self._untrusted &= present
        self._stuck &= present
        if changed:
            self._save_state()
            if self.s.dcgm_job_map_dir:
                self._write_dcgm()
            self._gpu_trigger.set()  # snapshot at every prolog and epilog
        return files

    def _write_dcgm(self) -> None:
        indices = set(self._latest) | set(self.jobs.by_gpu)
        try:
            self.jobs.write_dcgm_dir(self.s.dcgm_job_map_dir, sorted(indices))
        except OSError as exc:
            self.log(f"cannot write the dcgm job-mapping dir {self.s.dcgm_job_map_dir}: {exc}")

    def _report_damage(self, jf: spool.JournalFile) -> None:
        agentreports.report_damage(self, jf)

    def _report_untrusted(self, jf: spool.JournalFile) -> None:
        agentreports.report_untrusted(self, jf)

    def _report_stuck(self, jf: spool.JournalFile) -> None:
        agentreports.report_stuck(self, jf)

    def _snapshots(self, jf: spool.JournalFile) -> list[dict]:
        started = jf.started or {}
        if jf.attested_uid or started.get(c.R_CONTEXT) not in ("prolog_slurmd", "epilog_slurmd"):
            return []
        job = started.get(c.R_JOB) or {}
        out = []
        for i in job_gpus(job):
            s = self._latest.get(i)
            if s is not None:
                out.append(s.as_dict(job.get("job_id")))
        return out

    def _request_of(self, jf: spool.JournalFile):
        abandoned = jf.mtime_ns if jf.state == spool.ABANDONED else None
        req = otlp.fitted_trace(jf.entries, abandoned_ts=abandoned, gpu_snapshots=self._snapshots(jf))
        for rs in req.resource_spans:  # who wrote it: the spool's owner as stat()ed, not the records
            otlp._attrs(rs.resource.attributes, {c.A_ATTESTED_UID: int(jf.attested_uid)})
        return req

    def ship_files(self, files: list) -> bool:
        """Publish the OTLP requests of several files in one exporter call (one
        message per hook, pipelined); delete them all after every PubAck.
        False: nothing deleted, try again later (acked ones are then duplicates
        the stream drops)."""
        requests, todo = [], []
        for jf in files:
            jf = spool.load_full(jf)
            if jf is None:
                continue  # shipped by direct mode meanwhile
            if jf.attested_uid and jf.state != spool.UNTRUSTED:
                why = agentreports.foreign_identity(self, jf)  # a user's records speak for this node only
                if why:
                    jf.state, jf.untrusted, jf.entries = spool.UNTRUSTED, why, []
            if jf.state == spool.UNTRUSTED:  # replaced by an untrusted file since the scan
                self._report_untrusted(jf)
                continue
            self._report_damage(jf)
            if not jf.entries:
                spool.remove(jf.path, jf.spool_ident)  # nothing readable; the damage report says so
                continue
            requests.append(self._request_of(jf))
            todo.append(jf)
        if not todo:
            return True
        if not self.exporter.export(requests):
            self.stats.failures += 1
            self._note_outage(self.exporter.last_error)
            return False
        self.stats.duplicates += sum(1 for a in self.exporter.last_acks if getattr(a, "duplicate", False))
        for jf in todo:
            self.heads.observe(rec for _, rec in jf.entries)
            spool.remove(jf.path, jf.spool_ident)
            self.stats.files += 1
            self.stats.records += len(jf.entries)
            jf.entries = []  # memory stays flat through a big backlog
        return True

    def _note_outage(self, why) -> None:
        if self._outage_since is None:
            self._outage_since = time.monotonic()
            self.log(f"cannot ship to NATS ({why}); the journal keeps everything, retrying with backoff")

    def _note_ok(self) -> None:
        if self._outage_since is not None:
            self.log(f"NATS is back after {time.monotonic() - self._outage_since:.1f}s; shipping resumes in order")
            self._outage_since = None
        self._backoff = self.s.backoff_min_s

    def run_once(self, files=None) -> tuple[int, int]:
        """Ship every ready file in order; (shipped, still waiting or stuck).  Stops
        at the first failure so files leave the journal in sequence order.  Damage
        and stuck reports written during the pass are new files: ship them in
        the same call.  A file too large to ship counts as left (it stays)."""
        total = 0
        for _ in range(3):
            reports = self.stats.damage_reports + self.stats.untrusted_reports + self.stats.stuck
            shipped, left = self._pass(files)
            files = None
            total += shipped
            if left or self.stats.damage_reports + self.stats.untrusted_reports + self.stats.stuck == reports:
                break
        return total, left + len(self._stuck)

    def _pass(self, files=None) -> tuple[int, int]:
        files = self.scan() if files is None else files
        for jf in files:
            if jf.state == spool.UNTRUSTED:
                self._report_untrusted(jf)
        ready = spool.ready(files)
        if self._stuck and time.monotonic() < self._stuck_retry_at:
            ready = [jf for jf in ready if jf.path not in self._stuck]  # retried every STUCK_RETRY_S
        else:
            self._stuck_retry_at = time.monotonic() + STUCK_RETRY_S
        shipped = i = 0
        while i < len(ready) and not self._stop.is_set():
            window, size = [], 0
            while i + len(window) < len(ready) and len(window) < self.s.batch_files \
                    and size < self.s.batch_bytes:
                jf = ready[i + len(window)]
                window.append(jf)
                size += jf.size
            if self._try(window):
                shipped += len(window)
                i += len(window)
                continue
            # The window failed: go file by file, to ship what can be shipped
            # before the failing file and to tell an outage from a bad file.
            for jf in window:
                if self._try([jf]):
                    shipped += 1
                    i += 1
                    continue
                if "over the" in (self.exporter.last_error or "") or "max_payload" in (self.exporter.last_error or ""):
                    self._report_stuck(jf)
                    i += 1
                    continue
                return shipped, len(ready) - i
        if ready and shipped:
            self._note_ok()
        return shipped, len(ready) - i

    def _try(self, window) -> bool:
        try:
            return self.ship_files(window)
        except Exception as exc:  # noqa: BLE001 - the loop must survive anything
            self.log(f"shipping {window[0].path} (+{len(window) - 1}) failed: {type(exc).__name__}: {exc}")
            return False

    # ------------------------------------------------------------ GPUs
    def start_gpu(self, thread: bool = True) -> None:
        from emitter.gpu import detect

        try:
            self.gpu = detect(self.s.gpu, replay_path=self.s.gpu_replay,
                              replay_block=self.s.gpu_replay_block_s or None,
                              timeout_s=self.s.gpu_timeout_s, log=self.log)
        except EmitterError as exc:
            self.log(f"GPU sampling off: {exc}")
            self.gpu = None
        if self.gpu is None or not thread:
            return
        self._gpu_thread = threading.Thread(target=self._gpu_loop, name="hookscope-gpu", daemon=True)
        self._gpu_thread.start()

    def gpu_round(self) -> int:
        """Sample every GPU (bounded by gpu_timeout_s) and publish one metrics
        request; returns the number of samples (0 when the backend hangs)."""
        if self.gpu is None:
            return 0
        samples = self.gpu.sample()
        if samples:
            ts = time.time_ns()
            for s in samples:
                s.ts = ts
                self._latest[s.index] = s
            dicts = [s.as_dict(self.jobs.job_of(s.index)) for s in samples]
            data = otlp.encode_metrics(dicts, node=self.s.node, cluster=self.cluster, ts=ts)
            if len(self._pending_metrics) == self._pending_metrics.maxlen:
                self.stats.metric_dropped += 1
            self._pending_metrics.append((ts, data))
            if self.s.dcgm_job_map_dir:
                self._write_dcgm()
        self._flush_metrics()
        return len(samples)

    def _flush_metrics(self) -> None:
        subject = c.subject(c.SIGNAL_METRICS, self.cluster, self.s.node)
        while self._pending_metrics and not self._stop.is_set():
            ts, data = self._pending_metrics[0]
            # content-keyed: a duplicate is this node's same payload (docs/security.md)
            msg_id = c.message_id(self.cluster, self.s.node, c.SIGNAL_METRICS, _sha256(data))
            try:
                self.publisher.publish(subject, data, msg_id, c.CONTENT_TYPE_METRICS, self.s.publish_timeout_s)
            except Exception:  # noqa: BLE001 - kept for the next round
                return
            self._pending_metrics.popleft()
            self.stats.metric_rounds += 1

    def publish_heads(self, all_heads: bool = False) -> int:
        """Publish the chain heads that moved (signed when the node has an NKey)."""
        self._heads_at = time.monotonic()
        n = chainheads.publish(self.publisher, self.heads, self._signer, self.s.publish_timeout_s,
                               all_heads, self.log)
        self.stats.heads += n
        return n

    def _gpu_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.gpu_round()
            except Exception as exc:  # noqa: BLE001
                self.log(f"GPU round failed: {type(exc).__name__}: {exc}")
            self._gpu_trigger.wait(self.s.gpu_interval_s)
            self._gpu_trigger.clear()

    # ------------------------------------------------------------ node state
    def observe_node_state(self) -> dict | None:
        """One look at this node's Slurm state (emitter.nodestate.observe)."""
        from emitter import nodestate

        return nodestate.observe(self)

    def _node_loop(self) -> None:
        while not self._stop.wait(self.s.node_state_interval_s):
            self.observe_node_state()

    # ------------------------------------------------------------ main
    def run(self, once: bool = False) -> int:
        """Run until stop() (or one pass with ``once``).  Returns 0, or 1 when
        ``once`` left files behind because NATS was unreachable."""
        os.makedirs(self.s.journal, mode=0o700, exist_ok=True)
        if os.geteuid() == 0:  # the parent of the per-uid spools (emitter/userspool.py)
            from emitter.userspool import ensure_parent

            problem = ensure_parent(self.s.journal)
            if problem:
                self.log(problem)
        try:
            files = self.scan()  # learn the GPU job map before the first GPU round
            self.start_gpu(thread=not once)
            if once:
                if self.gpu is not None:
                    self.gpu_round()  # the snapshot the hook spans below carry
                shipped, left = self.run_once(files)
                self.publish_heads()
                if left:
                    self.log(f"{left} journal file(s) stayed behind, not shipped ({self.exporter.last_error}); "
                             "they stay in the journal for the next run")
                return 1 if left else 0
            if self.s.node_state_interval_s > 0:
                threading.Thread(target=self._node_loop, name="hookscope-node", daemon=True).start()
            while not self._stop.is_set():
                shipped, left = self.run_once()
                if self.s.head_interval_s and time.monotonic() - self._heads_at >= self.s.head_interval_s:
                    self.publish_heads()
                if left > len(self._stuck):  # an outage, not just files too large to ship
                    wait = self._backoff * (0.5 + random.random())
                    self._backoff = min(self._backoff * 2, self.s.backoff_max_s)
                else:
                    wait = self.s.poll_interval_s
                self._stop.wait(wait)
            self.publish_heads(all_heads=True)  # at stop: every head, so the last word is signed
            return 0
        finally:
            self.close()

    def stop(self) -> None:
        self._stop.set()
        self._gpu_trigger.set()

    def close(self) -> None:
        self._stop.set()
        self._gpu_trigger.set()
        if self.gpu is not None:
            self.gpu.backend.close()  # unblocks a replay 'hang'; real drivers: abandoned thread
        self.publisher.close()

"""``hookscope run --export direct``: publish the hook's journal file at once.

For sites that run no agent.  Called by the runner after the scripts and the
``hook_ended`` record; it must never raise, never change the exit status and
never delay the hook.  The publish runs in a detached grandchild killed by
SIGALRM at ``deadline_s`` (default 0.3 s, imports included); it speaks the
NATS protocol over one raw socket (INFO / CONNECT / SUB / HPUB, then the
JetStream PubAck), every read and write bounded by the time left.  The file is deleted only after the PubAck;
anything not sent stays in the journal for the agent or the next run, and
the stable ``Nats-Msg-Id`` makes a later re-send harmless.

Supported auth: none, user/password, token, TLS (CA, client cert).  A server
asking for an nkey/JWT signature is served only when the ``nkeys`` package is
importable; otherwise the file waits for the agent.
"""

import os
import socket
import time

DEFAULT_URL = "nats://127.0.0.1:4222"
#: Other complete files shipped in the same call while time remains.
MAX_BACKLOG_FILES = 16


class _Deadline(Exception):
    pass


def _settings(config):
    """NATS settings: environment > config [agent] > defaults, by the agent's own rules
    (emitter.natsauth: nats_url and NatsAuth.resolve); a plain dict for _Conn."""
    from emitter.natsauth import NatsAuth, nats_url, split_urls

    agent = {}
    if isinstance(config, dict):
        agent = config.get("agent", config) if isinstance(config.get("agent", config), dict) else {}
    return {"servers": split_urls(nats_url(agent, default=DEFAULT_URL)),
            **NatsAuth.resolve(agent).as_dict()}


class _Conn:
    """One NATS connection, every operation bounded by ``end`` (monotonic)."""

    def __init__(self, url, cfg, end):
        self.end = end
        self.buf = b""
        self.inboxes = {}
        rest = url.split("://", 1)[-1]
        scheme = url.split("://", 1)[0] if "://" in url else "nats"
        auth, _, hostport = rest.rpartition("@")
        host, _, port = hostport.partition(":")
        self.sock = socket.create_connection((host or "127.0.0.1", int(port or 4222)), timeout=self.left())
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        import json

        self.json = json
        line = self.readline()
        if not line.startswith(b"INFO "):
            raise OSError(f"not a NATS server: {line[:40]!r}")
        info = json.loads(line[5:])
        if scheme == "tls" or info.get("tls_required") or cfg.get("tls_ca"):
            import ssl

            ctx = ssl.create_default_context(cafile=cfg.get("tls_ca"))
            if cfg.get("tls_cert"):
                ctx.load_cert_chain(cfg["tls_cert"], cfg.get("tls_key"))
            self.sock.settimeout(self.left())
            self.sock = ctx.wrap_socket(self.sock, server_hostname=host)
        opts = {"verbose": False, "pedantic": False, "name": "hookscope-direct", "lang": "python",
                "version": "hookscope", "protocol": 1, "headers": True, "no_responders": True}
        user, password = cfg.get("user"), cfg.get("password")
        if auth:
            user, _, password = auth.partition(":")
        if user:
            opts["user"], opts["pass"] = user, password or ""
        if cfg.get("token"):
            opts["auth_token"] = cfg["token"]
        if info.get("nonce") and (cfg.get("creds") or cfg.get("nkey")):
            opts.update(_sign(cfg, info["nonce"]))
        self.send(b"CONNECT " + json.dumps(opts).encode() + b"\r\nPING\r\n")
        while True:
            line = self.readline()
            if line == b"PONG":
                return
            if line.startswith(b"-ERR"):
                raise OSError(line.decode(errors="replace"))

    def left(self):
        t = self.end - time.monotonic()
        if t <= 0:
            raise _Deadline()
        return t

    def send(self, data):
        self.sock.settimeout(self.left())
        self.sock.sendall(data)

    def _fill(self):
        self.sock.settimeout(self.left())
        chunk = self.sock.recv(65536)
        if not chunk:
            raise OSError("connection closed by server")
        self.buf += chunk

    def readline(self):
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def inbox(self, prefix):
        """(reply subject, sid) under ``prefix`` (the node's own inbox, which
        is all a node may subscribe to under docs/security.md's permissions)."""
        if prefix not in self.inboxes:
            sid = len(self.inboxes) + 1
            subj = f"{prefix}.{os.urandom(8).hex()}"
            self.send(b"SUB %s %d\r\n" % (subj.encode(), sid))
            self.inboxes[prefix] = (subj, sid)
        return self.inboxes[prefix]

    def request(self, subject, headers, payload, inbox, sid):
        """HPUB with a reply inbox; returns the reply payload (the PubAck JSON)."""
        hdr = "NATS/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        hdr = hdr.encode()
        self.send(b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject.encode(), inbox.encode(), len(hdr),
                                                       len(hdr) + len(payload), hdr, payload))
        while True:
            line = self.readline()
            if line == b"PING":
                self.send(b"PONG\r\n")
            elif line.startswith(b"-ERR"):
                raise OSError(line.decode(errors="replace"))
            elif line.startswith(b"MSG "):
                parts = line.split()
                return self.read(int(parts[-1]))
            elif line.startswith(b"HMSG "):
                parts = line.split()
                hlen, total = int(parts[-2]), int(parts[-1])
                data = self.read(total)
                if b" 503" in data[:hlen].split(b"\r\n", 1)[0]:
                    raise OSError("no JetStream stream answers on " + subject)
                return data[hlen:]

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _sign(cfg, nonce):
    """Nonce signature for a .creds file (JWT + seed) or an nkey seed file,
    only when the nkeys package is present (ImportError: the agent ships it)."""
    import base64
    import re

    import nkeys

    if cfg.get("creds"):
        with open(cfg["creds"]) as f:
            text = f.read()
        blocks = re.findall(r"-----BEGIN [^-]+-----\s*(.+?)\s*------END", text, re.S)
        if len(blocks) < 2:
            raise OSError(f"creds file {cfg['creds']} lacks a JWT and a seed")
        jwt, seed = blocks[0].strip(), blocks[1].strip()
    else:
        with open(cfg["nkey"]) as f:
            seed, jwt = f.read().strip(), None
    kp = nkeys.from_seed(seed.encode())
    sig = base64.urlsafe_b64encode(kp.sign(nonce.encode())).decode().rstrip("=")
    return {"jwt": jwt, "sig": sig} if jwt else {"nkey": kp.public_key.decode(), "sig": sig}


def _publish_file(conn, path):
    """Encode and publish one journal file; True after a good PubAck."""
    from emitter import contract as c
    from emitter import otlp, spool

    if os.geteuid() != 0:
        # A non-root hook's file lives in its per-owner spool: only the agent,
        # which attests the uid from the spool's owner, may ship it (direct
        # mode would send it unmarked, read as root's; docs/journal.md).
        return False
    jf = spool.read_file(path)
    if jf is None or not jf.entries or jf.damage:
        return False  # gone, or damaged: the agent reports damage properly
    if jf.state not in (spool.COMPLETE,):
        return False
    req = otlp.fitted_trace(jf.entries)
    for key, part in otlp.split_requests(req):  # the agent's exporter splits the same way
        cluster, node = otlp.resource_of(part)
        inbox, sid = conn.inbox(c.inbox_prefix(node))
        headers = {c.HDR_MSG_ID: c.message_id(cluster, node, c.SIGNAL_SPANS, key),
                   c.HDR_SCHEMA: str(c.SCHEMA_VERSION), c.HDR_CONTENT_TYPE: c.CONTENT_TYPE_TRACES}
        reply = conn.request(c.subject(c.SIGNAL_SPANS, cluster, node), headers, part.SerializeToString(),
                             inbox, sid)
        ack = conn.json.loads(reply)
        if not isinstance(ack, dict) or "error" in ack or "seq" not in ack:
            return False
    spool.remove(path)
    return True


def ship(journal_dir, hook_file, deadline_s=0.3, config=None, detach=True):
    """Publish ``hook_file`` (and, time permitting, older complete files) and
    delete what JetStream acknowledged.  Never raises; returns None.

    ``detach`` (the default): the work runs in a detached grandchild (fork,
    setsid, stdio on /dev/null, killed by SIGALRM at the deadline), so the
    runner pays one fork (~2 ms) whether NATS is up, down or slow, and
    slurmd's output pipe closes when the runner exits.  ``detach=False`` does
    it in this process, bounded by the same deadline.
    """
    try:
        deadline_s = max(0.0, float(deadline_s if deadline_s is not None else 0.3))
        if not detach:
            _ship_now(journal_dir, hook_file, deadline_s, config)
            return None
        pid = os.fork()
        if pid:
            os.waitpid(pid, 0)  # the intermediate child exits at once
            return None
    except BaseException:  # noqa: BLE001 - never into the runner
        return None
    # Intermediate child: new session (out of the hook's process group, which
    # slurmd kills when the hook ends), fork again so nobody has to reap us.
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        fd = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(fd, target)
        os.closerange(3, 1024)
        import signal

        signal.signal(signal.SIGALRM, signal.SIG_DFL)  # the deadline kills us, whatever we do
        signal.setitimer(signal.ITIMER_REAL, max(deadline_s, 0.001))
        _ship_now(journal_dir, hook_file, deadline_s, config)
    except BaseException:  # noqa: BLE001
        pass
    os._exit(0)


def _ship_now(journal_dir, hook_file, deadline_s, config):
    start = time.monotonic()
    try:
        end = start + deadline_s
        cfg = _settings(config)
        conn = None
        for url in cfg["servers"]:
            try:
                conn = _Conn(url, cfg, end)
                break
            except (OSError, ValueError):
                continue
        if conn is None:
            return None
        try:
            if not _publish_file(conn, str(hook_file)):
                return None
            # Time left: ship the backlog the agent (or earlier runs) left.
            from emitter import spool

            done = 0
            for jf in spool.ready(spool.scan(str(journal_dir))):
                if done >= MAX_BACKLOG_FILES or end - time.monotonic() < 0.02:
                    break
                if jf.path != str(hook_file) and _publish_file(conn, jf.path):
                    done += 1
        finally:
            conn.close()
    except BaseException:  # noqa: BLE001 - never into the runner: its exit status is sacred
        return None
    return None

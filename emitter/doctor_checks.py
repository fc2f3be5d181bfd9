"""The node checks behind ``hookscope doctor`` (see :mod:`emitter.doctor`).

Each ``check_*`` function takes the resolved :class:`Setup` and returns a list
of :class:`Check` (status OK/WARN/FAIL, what is wrong, how to fix it): hook and
journal directories, credential and TLS files, NATS, GPU backends.  Every
network or driver call has a deadline.  :mod:`emitter.doctor` reads the
configuration (hookscope.toml, slurm.conf), runs these and re-exports them.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from emitter import contract
from emitter.natsauth import NatsAuth

OK, WARN, FAIL = "OK", "WARN", "FAIL"


@dataclass
class Check:
    name: str
    status: str
    message: str
    fix: str = ""

    def line(self) -> str:
        s = f"{self.status:<4} {self.name:<11} {self.message}"
        return s + (f"\n     {'':<11} fix: {self.fix}" if self.fix else "")


@dataclass
class Setup:
    """What the doctor looks at, filled by emitter.doctor.resolve from the runner's and
    the agent's settings objects (option, env var, config, default)."""
    config_path: str | None = None
    config: dict = field(default_factory=dict)
    slurm_conf: str | None = None
    journal_dir: str = contract.JOURNAL_DIR_DEFAULT
    nats_urls: list[str] = field(default_factory=list)
    creds: str | None = None
    nkey: str | None = None
    user: str | None = None
    password: str | None = None
    token: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    hook_dirs: dict[str, list[str]] = field(default_factory=dict)
    layout: str | None = None
    node: str = ""
    timeout_s: float | None = None
    kill_grace_s: float = 1.0
    strict: object = "auto"
    deadline_s: float = 2.0
    skip_nats: bool = False

    @property
    def auth(self) -> NatsAuth:
        """The NATS login the agent would use (the one NatsAuth type)."""
        return NatsAuth(creds=self.creds, nkey=self.nkey, user=self.user, password=self.password,
                        token=self.token, tls_ca=self.tls_ca, tls_cert=self.tls_cert, tls_key=self.tls_key)


# ------------------------------------------------------------------ files
def _mode(st) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _unsafe(st) -> str | None:
    """Why a root-run file or dir is unsafe, or None."""
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & stat.S_IWOTH:
        return f"writable by others (mode {_mode(st)})"
    if st.st_mode & stat.S_IWGRP:
        return f"writable by group (mode {_mode(st)})"
    return None


def check_hook_dirs(s: Setup) -> list[Check]:
    if not s.hook_dirs:
        return [Check("hook-dirs", WARN, "no hook directories configured",
                      "set [runner.dirs] prolog_slurmd = \"/etc/slurm/prolog.d\" (and the other contexts) "
                      "in the config, or pass --hook-dir")]
    out = []
    for ctx, dirs in s.hook_dirs.items():
        for d in dirs:
            out += _check_one_dir(ctx, d, s.layout or "slurm", s.strict)
    return out


_FINDING_PATH = re.compile(r"(?:^| )(/.*?)(?: \(-> (.+?)\))? is (?:owned|writable)")


def _finding_fix(finding: str) -> str:
    m = _FINDING_PATH.search(finding)
    p = (m.group(2) or m.group(1)) if m else "the file or directory named"
    return f"chown root:root {p} && chmod go-w {p}"


def _check_one_dir(ctx: str, d: str, layout: str, strict) -> list[Check]:
    """The directory as the runner plans it: permission findings (trust.py's
    rules, symlinks judged by their target), and what fails the hook."""
    from emitter import layouts

    name = "hook-dir"
    try:
        st = os.stat(d)
    except FileNotFoundError:
        return [Check(name, FAIL, f"{ctx}: {d} does not exist (the slurm layout fails an empty or missing dir, "
                                  "which drains the node)", f"mkdir -m 0755 {d} && chown root:root {d}")]
    except OSError as exc:
        return [Check(name, FAIL, f"{ctx}: {d}: {exc}", f"make {d} readable by root")]
    if not stat.S_ISDIR(st.st_mode):
        return [Check(name, FAIL, f"{ctx}: {d} is not a directory", f"point [runner.dirs] {ctx} at a directory")]
    try:
        knobs = layouts.knobs_for(layout if layout in layouts.PRESETS else "slurm")
        mode = layouts.strict_mode(strict)
    except layouts.LayoutError:
        knobs, mode = layouts.knobs_for("slurm"), layouts.STRICT_RECORD
    entries, warnings = layouts.plan([d], knobs, strict=layouts.STRICT_RECORD)
    out = []
    if mode == layouts.STRICT_ENFORCE:
        effect = "strict = \"enforce\" refuses it (status 126) and the hook fails"
    else:
        effect = ("hookscope runs it, as slurmd would, and records a finding on every hook; a non-root user "
                  "can change what root runs")
    for w in warnings:
        if w.startswith(layouts.FINDING_PREFIX):
            f = w[len(layouts.FINDING_PREFIX):]
            out.append(Check(name, FAIL, f"{ctx}: {f}; {effect}", _finding_fix(f)))
    strict_layout = knobs["non_executable"] == "fail"
    n = 0
    for e in entries:
        if e.action == layouts.SKIP:
            if e.warn:
                out.append(Check(name, WARN, f"{ctx}: {e.path}: {e.reason} (skipped)", f"repair or remove {e.path}"))
            continue
        n += 1
        if e.action == layouts.FAIL:
            out.append(Check(name, FAIL if strict_layout or "stat" in (e.reason or "") else WARN,
                             f"{ctx}: {e.path}: {e.reason} (the {layout} layout fails the hook here)",
                             f"chmod 0755 {e.path}, or move it out of {d}"))
        elif e.action == layouts.REFUSE and not e.findings:
            out.append(Check(name, FAIL, f"{ctx}: {e.path}: {e.reason}", f"fix {e.path} or move it out of {d}"))
    if n == 0:
        out.append(Check(name, WARN, f"{ctx}: {d} is empty (the slurm layout fails an empty glob)",
                         f"add a script to {d} or remove the context from the config"))
    if not out:
        out.append(Check(name, OK, f"{ctx}: {d}: {n} script(s), root-owned, not group/other-writable"))
    return out


def check_journal(s: Setup) -> list[Check]:
    d = s.journal_dir
    name = "journal"
    try:
        st = os.stat(d)
    except FileNotFoundError:
        return [Check(name, WARN, f"{d} does not exist yet (the runner creates it 0700 on the first hook)",
                      f"install -d -m 0700 -o root -g root {d}")]
    except OSError as exc:
        return [Check(name, FAIL, f"{d}: {exc}", f"make {d} accessible to root")]
    out = []
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o077:
        out.append(Check(name, FAIL, f"{d} has owner uid {st.st_uid} mode {_mode(st)}; it must be root, 0700 "
                                     "(anyone who can write it can forge hook records)",
                         f"chown root:root {d} && chmod 0700 {d}"))
    bad, n, total = [], 0, 0
    for entry in os.listdir(d):
        p = os.path.join(d, entry)
        try:
            fst = os.lstat(p)
        except OSError:
            continue  # shipped and deleted meanwhile
        if entry.endswith(contract.JOURNAL_SUFFIX):
            n += 1
            total += fst.st_size
        if stat.S_ISREG(fst.st_mode) and (fst.st_uid != 0 or fst.st_mode & 0o022):
            bad.append(f"{entry} (uid {fst.st_uid}, mode {_mode(fst)})")
        elif stat.S_ISLNK(fst.st_mode):
            bad.append(f"{entry} (symlink)")
    if bad:
        out.append(Check(name, FAIL, f"{d}: {len(bad)} file(s) a non-root user could have written (possible "
                                     f"forgery; not evidence): {', '.join(bad[:5])}",
                         f"inspect and remove them; then chmod 0700 {d}"))
    lost = _read_lost(os.path.join(d, "lost"))
    if lost:
        out.append(Check(name, WARN, f"{d}/lost says {lost} record(s) were lost (disk full or read-only spool)",
                         f"free space on the filesystem of {d}; the next hook reports and resets the count"))
    try:
        vfs = os.statvfs(d)
        free = vfs.f_bavail * vfs.f_frsize
        if free < 64 * 1024 * 1024:
            out.append(Check(name, WARN, f"{d}: only {free // 1024} KiB free; records will be lost when full",
                             "free space or move the journal ([runner] journal_dir)"))
    except OSError:
        pass
    if not out:
        out.append(Check(name, OK, f"{d}: root 0700, {n} file(s) waiting ({total // 1024} KiB)"))
    return out


def _read_lost(path: str) -> int:
    try:
        with open(path, "rb") as f:
            m = re.search(rb"\d+", f.read(64))
        return int(m.group()) if m else 0
    except OSError:
        return 0


# ------------------------------------------------------------------ credentials
def _secret_file(name: str, path: str, kind: str) -> tuple[Check | None, str | None]:
    try:
        st = os.stat(path)
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError as exc:
        return Check("creds", FAIL, f"{kind} {path}: {exc.strerror or exc}",
                     f"check the path in the config and that root can read {path}"), None
    if os.geteuid() == 0:
        problems = NatsAuth.trust_problems(path, kind)  # what NatsAuth.check refuses as root
        if problems:
            # As root, the agent refuses it (config.check_trusted): another user could swap the identity.
            return Check("creds", FAIL, f"{'; '.join(problems)}; the agent refuses it as root",
                         _finding_fix(problems[0])), text
    if st.st_mode & 0o077:
        return Check("creds", WARN, f"{kind} {path} is readable by group/others (mode {_mode(st)})",
                     f"chmod 0600 {path}"), text
    return None, text


def check_credentials(s: Setup) -> list[Check]:
    out: list[Check] = []
    if s.creds:
        warn, text = _secret_file("creds", s.creds, "creds file")
        if text is not None and warn is not None and warn.status == FAIL:
            out.append(warn)  # untrusted (another user can write it): a FAIL of its own
            warn = None
        if text is not None:
            if "BEGIN NATS USER JWT" in text and "SEED" in text:
                out.append(warn or Check("creds", OK, f"creds file {s.creds} readable, has a JWT and a seed"))
            else:
                out.append(Check("creds", FAIL, f"creds file {s.creds} has no 'NATS USER JWT' and seed sections",
                                 "regenerate it with 'nsc generate creds' (or use an nkey seed file instead)"))
        else:
            out.append(warn)
    if s.nkey:
        warn, text = _secret_file("creds", s.nkey, "nkey seed")
        if text is not None and warn is not None and warn.status == FAIL:
            out.append(warn)
            warn = None
        if text is None:
            out.append(warn)
        else:
            seed = text.strip().splitlines()[0].strip() if text.strip() else ""
            try:
                import nkeys

                pub = nkeys.from_seed(seed.encode()).public_key.decode()
                out.append(warn or Check("creds", OK, f"nkey seed {s.nkey} valid (public key {pub})"))
            except ImportError:
                out.append(Check("creds", WARN, "the nkeys package is missing; cannot use an nkey seed",
                                 "pip install 'nats-py[nkeys]' into hookscope's venv"))
            except Exception:
                out.append(Check("creds", FAIL, f"nkey seed {s.nkey} is not a valid user seed (expected 'SU...')",
                                 "regenerate it with deploy/nats/gen_auth.py and copy the node's .nk file"))
    if s.user and not s.password:
        out.append(Check("creds", FAIL, f"NATS user {s.user!r} is set but no password",
                         "set [agent] password (or HOOKSCOPE_NATS_PASSWORD)"))
    if s.tls_ca or s.tls_cert or s.tls_key:
        out += _check_tls(s)
    if not out:
        out.append(Check("creds", WARN, "no NATS credentials configured (anonymous connection)",
                         "generate per-node nkeys with deploy/nats/gen_auth.py; see docs/security.md"))
    return out


def _check_tls(s: Setup) -> list[Check]:
    import ssl

    try:
        ctx = ssl.create_default_context(cafile=s.tls_ca) if s.tls_ca else ssl.create_default_context()
        if s.tls_cert or s.tls_key:
            if not (s.tls_cert and s.tls_key):
                return [Check("tls", FAIL, "TLS needs both a certificate and its key",
                              "set both [agent] tls_cert and tls_key")]
            ctx.load_cert_chain(s.tls_cert, s.tls_key)
    except (OSError, ssl.SSLError) as exc:
        return [Check("tls", FAIL, f"TLS files (ca={s.tls_ca}, cert={s.tls_cert}, key={s.tls_key}): {exc}",
                      "check the paths and that the key matches the certificate (openssl x509 -noout -modulus)")]
    out = [Check("tls", OK, f"TLS CA/cert/key load (ca={s.tls_ca}, cert={s.tls_cert})")]
    if s.tls_key:
        try:
            if os.stat(s.tls_key).st_mode & 0o077:
                out.append(Check("tls", WARN, f"TLS key {s.tls_key} is readable by group/others",
                                 f"chmod 0600 {s.tls_key}"))
        except OSError:
            pass
    return out


# ------------------------------------------------------------------ NATS
def _server_info(url: str, deadline_s: float) -> dict:
    import json
    from urllib.parse import urlsplit

    u = urlsplit(url if "://" in url else "nats://" + url)
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 4222), timeout=deadline_s) as sock:
        sock.settimeout(deadline_s)
        buf = b""
        while b"\r\n" not in buf and len(buf) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            buf += chunk
    line = buf.split(b"\r\n", 1)[0]
    if not line.startswith(b"INFO "):
        raise ValueError(f"not a NATS server (first line {line[:40]!r})")
    return json.loads(line[5:])


def check_nats(s: Setup) -> list[Check]:
    if s.skip_nats:
        return [Check("nats", WARN, "NATS checks skipped (--no-nats)")]
    out = []
    reachable = []
    for url in s.nats_urls:
        try:
            info = _server_info(url, s.deadline_s)
        except (OSError, ValueError) as exc:
            out.append(Check("nats", FAIL, f"{url}: unreachable within {s.deadline_s:g}s ({exc})",
                             "start nats-server / the collector, or fix [agent] nats; the journal keeps "
                             "everything meanwhile (hooks are not affected)"))
            continue
        reachable.append(url)
        flags = [f"nats-server {info.get('version', '?')}"]
        flags.append("jetstream" if info.get("jetstream") else "NO jetstream")
        flags += [f for f, k in (("auth required", "auth_required"), ("tls required", "tls_required")) if info.get(k)]
        if not info.get("jetstream"):
            out.append(Check("nats", FAIL, f"{url}: {', '.join(flags)}", "start nats-server with -js"))
        else:
            out.append(Check("nats", OK, f"{url}: {', '.join(flags)}"))
        if info.get("tls_required") and not (s.tls_ca or s.tls_cert):
            out.append(Check("tls", WARN, f"{url} requires TLS but no CA is configured (system CAs will be used)",
                             "set [agent] tls_ca (and tls_cert/tls_key for mutual TLS)"))
    if reachable:
        out += _check_nats_login(s, reachable)
    return out


def _check_nats_login(s: Setup, urls: list[str]) -> list[Check]:
    import asyncio
    import importlib.util

    if importlib.util.find_spec("nats") is None:
        return [Check("nats", WARN, "nats-py not installed; login not checked", "pip install nats-py")]

    async def go():
        import nats

        # the node's own inbox prefix: per-node auth only lets it read replies there
        kw = dict(connect_timeout=s.deadline_s, allow_reconnect=False, max_reconnect_attempts=0,
                  inbox_prefix=contract.inbox_prefix(s.node))
        kw.update(s.auth.connect_kwargs(urls))  # the agent's login, through the one NatsAuth
        if "tls" in kw:
            kw["tls_hostname"] = None

        async def quiet(_e):
            pass

        nc = await nats.connect(urls, error_cb=quiet, **{k: v for k, v in kw.items() if v is not None})
        try:
            try:
                js = nc.jetstream(timeout=s.deadline_s)
                info = await js.stream_info(contract.STREAM_NAME)
                return info.state.messages, None
            except Exception as exc:
                return None, exc
        finally:
            await nc.close()

    try:
        n, err = asyncio.run(asyncio.wait_for(go(), s.deadline_s * 2 + 1))
    except Exception as exc:
        text = str(exc) or type(exc).__name__
        return [Check("nats", FAIL, f"login to {urls[0]} failed: {text}",
                      "check the credentials ([agent] creds/nkey/user+password) against the server's "
                      "authorization (deploy/nats/gen_auth.py)")]
    if err is not None:
        return [Check("nats", WARN, f"logged in, but stream {contract.STREAM_NAME} not visible ({err or type(err).__name__})",
                      "start the collector once (it creates the stream) or allow $JS.API.STREAM.INFO for this user")]
    return [Check("nats", OK, f"logged in as node {s.node}; stream {contract.STREAM_NAME} holds {n} message(s)")]


# ------------------------------------------------------------------ GPU
def _call_with_deadline(fn, deadline_s: float):
    """Run fn in a daemon thread; a hung driver call is abandoned, not waited for."""
    box: dict = {}

    def target():
        try:
            box["v"] = fn()
        except BaseException as exc:  # noqa: BLE001 - report whatever the library raised
            box["e"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(deadline_s)
    if t.is_alive():
        raise TimeoutError(f"no answer within {deadline_s:g}s (driver hung?)")
    if "e" in box:
        raise box["e"]
    return box.get("v")


def check_gpu(s: Setup) -> list[Check]:
    nvidia_dev = any(Path("/dev").glob("nvidia[0-9]*"))
    amd_dev = os.path.exists("/dev/kfd")
    out = []
    if nvidia_dev:
        out.append(_probe("nvml", _nvml_count, s.deadline_s,
                          "pip install 'hookscope[nvidia]' (nvidia-ml-py) and check the driver with nvidia-smi"))
    if amd_dev:
        out.append(_probe("amdsmi", _amdsmi_count, s.deadline_s,
                          "pip install amdsmi matching the ROCm version and check with amd-smi"))
    if not out:
        out.append(Check("gpu", OK, "no GPU devices (/dev/nvidia*, /dev/kfd); GPU metrics are off on this node"))
    return out


def _probe(name, fn, deadline_s, fix) -> Check:
    try:
        n = _call_with_deadline(fn, deadline_s)
        return Check("gpu", OK, f"{name}: {n} GPU(s) visible")
    except ImportError as exc:
        return Check("gpu", WARN, f"{name} backend not installed ({exc}); GPU metrics off", fix)
    except Exception as exc:
        return Check("gpu", WARN, f"{name} backend fails: {exc}; GPU metrics off (hooks are not affected)", fix)


def _nvml_count():
    import pynvml

    pynvml.nvmlInit()
    try:
        return pynvml.nvmlDeviceGetCount()
    finally:
        pynvml.nvmlShutdown()


def _amdsmi_count():
    import amdsmi

    amdsmi.amdsmi_init()
    try:
        return len(amdsmi.amdsmi_get_processor_handles())
    finally:
        amdsmi.amdsmi_shut_down()

"""``hookscope doctor``: check a node's hookscope set-up and say how to fix it.

Library first: every check is a function returning a list of :class:`Check`
(status OK/WARN/FAIL, what is wrong, how to fix it); :func:`run_checks` runs
them all, each guarded so a crashing check reports FAIL instead of killing the
doctor; the click command only prints.  Every network call has a deadline.
"""

from __future__ import annotations

import os
import re
import socket
import stat
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

from emitter import contract

OK, WARN, FAIL = "OK", "WARN", "FAIL"
DEFAULT_CONFIG = "/etc/hookscope/hookscope.toml"
DEFAULT_SLURM_CONF = "/etc/slurm/slurm.conf"
#: configless slurmd keeps the pulled config here (Slurm 20.02+)
CONFIGLESS_CACHES = ("/run/slurm/conf/slurm.conf", "/var/spool/slurmd/conf-cache/slurm.conf")
DEFAULT_NATS = "nats://127.0.0.1:4222"
HOOK_KEYS = ("Prolog", "Epilog", "PrologSlurmctld", "EpilogSlurmctld", "TaskProlog",
             "TaskEpilog", "SrunProlog", "SrunEpilog")
HOOK_BINARY = "hookscope-hook"


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
    """What the doctor looks at, resolved once: option, env var, config, default."""
    config_path: str | None = None
    config: dict = field(default_factory=dict)
    slurm_conf: str | None = None
    journal_dir: str = contract.JOURNAL_DIR_DEFAULT
    nats_urls: list[str] = field(default_factory=list)
    creds: str | None = None
    nkey: str | None = None
    user: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    hook_dirs: dict[str, list[str]] = field(default_factory=dict)
    layout: str | None = None
    node: str = ""
    timeout_s: float | None = None
    deadline_s: float = 2.0
    skip_nats: bool = False


def _first(*vals):
    for v in vals:
        if v not in (None, ""):
            return v
    return None


def _get(section: dict, *keys):
    return _first(*(section.get(k) for k in keys))


def resolve(config_path=None, slurm_conf=None, journal=None, nats=None, creds=None,
            hook_dirs=(), deadline_s=2.0, skip_nats=False) -> tuple[Setup, list[Check]]:
    """Build the Setup; the config check's results come back with it."""
    checks: list[Check] = []
    s = Setup(deadline_s=deadline_s, skip_nats=skip_nats)
    explicit = _first(config_path, os.environ.get("HOOKSCOPE_CONFIG"))
    s.config_path = explicit or DEFAULT_CONFIG
    try:
        s.config = _load_config(explicit)
        if s.config:
            checks.append(Check("config", OK, f"{s.config_path} parsed"))
        elif explicit is None and not os.path.exists(DEFAULT_CONFIG):
            checks.append(Check("config", WARN, f"no config file at {DEFAULT_CONFIG}; built-in defaults apply",
                                f"copy docs/config.md's example to {DEFAULT_CONFIG} to set hook dirs and NATS"))
        else:
            checks.append(Check("config", OK, f"{s.config_path} parsed (empty)"))
    except Exception as exc:  # ConfigError or TOML error: say which file and why
        checks.append(Check("config", FAIL, f"{s.config_path}: {exc}",
                            "fix the file (TOML syntax, known keys only), then run 'hookscope doctor' again"))
    runner = s.config.get("runner", {}) if isinstance(s.config.get("runner"), dict) else {}
    agent = s.config.get("agent", {}) if isinstance(s.config.get("agent"), dict) else {}
    s.slurm_conf = slurm_conf
    s.journal_dir = str(_first(journal, os.environ.get("HOOKSCOPE_JOURNAL"),
                               _get(runner, "journal_dir"), _get(agent, "journal", "journal_dir"),
                               contract.JOURNAL_DIR_DEFAULT))
    url = _first(nats, os.environ.get("HOOKSCOPE_NATS_URL"), _get(agent, "nats"), DEFAULT_NATS)
    s.nats_urls = [u.strip() for u in (url if isinstance(url, list) else str(url).split(",")) if u.strip()]
    s.creds = _first(creds, os.environ.get("HOOKSCOPE_NATS_CREDS"), _get(agent, "creds"))
    s.nkey = _first(os.environ.get("HOOKSCOPE_NATS_NKEY"), _get(agent, "nkey"))
    s.user = _first(os.environ.get("HOOKSCOPE_NATS_USER"), _get(agent, "user"))
    s.password = _first(os.environ.get("HOOKSCOPE_NATS_PASSWORD"), _get(agent, "password"))
    s.tls_ca = _first(os.environ.get("HOOKSCOPE_NATS_TLS_CA"), _get(agent, "tls_ca"))
    s.tls_cert = _first(os.environ.get("HOOKSCOPE_NATS_TLS_CERT"), _get(agent, "tls_cert"))
    s.tls_key = _first(os.environ.get("HOOKSCOPE_NATS_TLS_KEY"), _get(agent, "tls_key"))
    checks += _check_agent_section(s.config)
    s.layout = runner.get("layout")
    s.node = str(_first(os.environ.get("HOOKSCOPE_NODE"), runner.get("node"), _get(agent, "node"),
                        os.uname().nodename.split(".")[0]))
    t = _get(runner, "timeout_s", "timeout")
    s.timeout_s = float(t) if isinstance(t, (int, float)) else None
    dirs = runner.get("dirs", {}) if isinstance(runner.get("dirs"), dict) else {}
    if not dirs and not hook_dirs:  # the runner's defaults, where they exist on this node
        dirs = {ctx: d for ctx, d in _default_dirs().items() if os.path.isdir(d)}
    for ctx, d in dirs.items():
        s.hook_dirs[ctx] = [d] if isinstance(d, str) else [str(x) for x in d]
    if hook_dirs:
        s.hook_dirs["--hook-dir"] = list(hook_dirs)
    return s, checks


def _check_agent_section(cfg: dict) -> list[Check]:
    """[agent] as the agent itself will read it (unknown keys, bad values)."""
    if not isinstance(cfg.get("agent"), dict):
        return []
    try:
        from emitter.agent import AgentSettings
    except ImportError:
        return []
    try:
        AgentSettings.resolve(cfg, env={})
    except Exception as exc:  # AgentConfigError names the key and the fix
        return [Check("config", FAIL, f"[agent]: {exc}", "fix the [agent] section (see docs/agent.md)")]
    return []


def _default_dirs() -> dict:
    try:
        from emitter.config import DEFAULT_DIRS
    except ImportError:
        return {}
    return dict(DEFAULT_DIRS)


def _load_config(path):
    try:
        from emitter.config import load_config
    except ImportError:  # runner's config module absent: read TOML directly
        p = path or DEFAULT_CONFIG
        if not os.path.exists(p):
            if path:
                raise FileNotFoundError(f"config file {p} does not exist")
            return {}
        import tomllib

        with open(p, "rb") as f:
            return tomllib.load(f)
    return load_config(path)


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
    strict_layout = (s.layout or "slurm") == "slurm"
    for ctx, dirs in s.hook_dirs.items():
        for d in dirs:
            out += _check_one_dir(ctx, d, strict_layout)
    return out


def _check_one_dir(ctx: str, d: str, strict_layout: bool) -> list[Check]:
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
    out = []
    why = _unsafe(st)
    if why:
        out.append(Check(name, FAIL, f"{ctx}: directory {d} is {why}; strict mode refuses every script in it",
                         f"chown root:root {d} && chmod go-w {d}"))
    real_dir = os.path.realpath(d)
    n = 0
    for entry in sorted(os.listdir(d)):
        p = os.path.join(d, entry)
        if entry.startswith("."):
            continue
        n += 1
        try:
            lst = os.lstat(p)
            if stat.S_ISLNK(lst.st_mode):
                target = os.path.realpath(p)
                if os.path.commonpath([real_dir, target]) != real_dir:
                    out.append(Check(name, FAIL, f"{ctx}: {p} is a symlink to {target}, outside {d}; "
                                                 "the runner refuses it", f"copy the script into {d} instead of linking"))
                    continue
            fst = os.stat(p)
        except OSError as exc:
            out.append(Check(name, FAIL, f"{ctx}: {p}: {exc}", f"remove or repair {p}"))
            continue
        if stat.S_ISDIR(fst.st_mode):
            continue
        why = _unsafe(fst)
        if why:
            out.append(Check(name, FAIL, f"{ctx}: {p} is {why}; strict mode refuses it and the hook fails",
                             f"chown root:root {p} && chmod go-w {p}"))
        elif not fst.st_mode & stat.S_IXUSR:
            out.append(Check(name, FAIL if strict_layout else WARN,
                             f"{ctx}: {p} is not executable"
                             + (" (the slurm layout fails the hook with 127)" if strict_layout else " (skipped)"),
                             f"chmod 0755 {p}, or move it out of {d}"))
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
    if st.st_mode & 0o077:
        return Check("creds", WARN, f"{kind} {path} is readable by group/others (mode {_mode(st)})",
                     f"chmod 0600 {path}"), text
    return None, text


def check_credentials(s: Setup) -> list[Check]:
    out: list[Check] = []
    if s.creds:
        warn, text = _secret_file("creds", s.creds, "creds file")
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


def _tls_context(s: Setup):
    if not (s.tls_ca or s.tls_cert):
        return None
    import ssl

    ctx = ssl.create_default_context(cafile=s.tls_ca) if s.tls_ca else ssl.create_default_context()
    if s.tls_cert and s.tls_key:
        ctx.load_cert_chain(s.tls_cert, s.tls_key)
    return ctx


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
        if s.creds:
            kw["user_credentials"] = s.creds
        if s.nkey:
            kw["nkeys_seed"] = s.nkey
        if s.user:
            kw.update(user=s.user, password=s.password)
        tls = _tls_context(s)
        if tls:
            kw["tls"] = tls
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


# ------------------------------------------------------------------ slurm.conf
_KV = re.compile(r"^\s*([A-Za-z]+)\s*=\s*(.*?)\s*$")


def parse_slurm_conf(path: str, _depth: int = 0) -> dict[str, str]:
    """Key=value lines, keys lowercased; follows ``Include`` (relative to the file)."""
    out: dict[str, str] = {}
    base = os.path.dirname(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.lower().startswith("include ") and _depth < 5:
                for inc in line.split(None, 1)[1].split():
                    inc = inc if os.path.isabs(inc) else os.path.join(base, inc)
                    if os.path.exists(inc):
                        out.update(parse_slurm_conf(inc, _depth + 1))
                continue
            m = _KV.match(line)
            if m and " " not in m.group(2):  # node/partition lines hold several pairs: not ours
                out[m.group(1).lower()] = m.group(2).strip('"')
    return out


def check_slurm_conf(s: Setup) -> list[Check]:
    path = s.slurm_conf
    if path is None:
        for cand in (os.environ.get("SLURM_CONF"), DEFAULT_SLURM_CONF, *CONFIGLESS_CACHES):
            if cand and os.path.exists(cand):
                path = cand
                break
    if path is None or not os.path.exists(path):
        return [Check("slurm.conf", WARN, f"no slurm.conf at {path or DEFAULT_SLURM_CONF} (configless node "
                                          "without a cached copy, or not a Slurm node)",
                      "pass --slurm-conf PATH, or check the controller's slurm.conf")]
    try:
        conf = parse_slurm_conf(path)
    except OSError as exc:
        return [Check("slurm.conf", FAIL, f"{path}: {exc}", f"make {path} readable")]
    out, wired = [], []
    for key in HOOK_KEYS:
        val = conf.get(key.lower())
        if not val:
            continue
        if os.path.basename(val).startswith(HOOK_BINARY):
            if os.path.isfile(val) and os.access(val, os.X_OK):
                wired.append(key)
            else:
                out.append(Check("slurm.conf", FAIL, f"{key}={val}: no executable there; every {key} would fail "
                                                     "(and drain the node)",
                                 f"install hookscope so {val} exists, or point {key} at the installed "
                                 f"{HOOK_BINARY} (which {HOOK_BINARY})"))
        else:
            out.append(Check("slurm.conf", WARN, f"{key}={val} bypasses hookscope (not observed)",
                             f"{key}=/opt/hookscope/bin/{HOOK_BINARY} and list the old scripts' dir in "
                             "[runner.dirs]; see deploy/slurm/hookscope.conf.snippet"))
    if not wired and not any(c.status == FAIL for c in out):
        out.append(Check("slurm.conf", FAIL, f"{path}: no Prolog/Epilog/... line points to {HOOK_BINARY}",
                         "add the lines from deploy/slurm/hookscope.conf.snippet and 'scontrol reconfigure'"))
    if wired:
        out.insert(0, Check("slurm.conf", OK, f"{path}: {', '.join(wired)} -> {HOOK_BINARY}"))
    pet = conf.get("prologepilogtimeout")
    if pet and s.timeout_s and pet.isdigit() and s.timeout_s >= int(pet):
        out.append(Check("slurm.conf", WARN, f"runner timeout {s.timeout_s:g}s is not below PrologEpilogTimeout="
                                             f"{pet}: slurmd would kill the runner before it records the timeout",
                         f"set [runner] timeout_s below {pet}"))
    return out


# ------------------------------------------------------------------ driver
CHECKS = (check_hook_dirs, check_journal, check_credentials, check_nats, check_gpu, check_slurm_conf)


def run_checks(s: Setup, pre: list[Check] | None = None) -> list[Check]:
    results = list(pre or [])
    for fn in CHECKS:
        try:
            results += fn(s)
        except Exception as exc:  # a doctor that crashes tells nobody anything
            results.append(Check(fn.__name__.removeprefix("check_"), FAIL, f"check crashed: {exc!r}",
                                 "report this as a hookscope bug"))
    return results


def summary(results: list[Check]) -> dict:
    return {k: sum(1 for r in results if r.status == k) for k in (OK, WARN, FAIL)}


def _make_command():
    import click

    @click.command("doctor", help="""Check this node's hookscope set-up and say how to fix it.

    Checks the config file, hook directories and their permissions, the
    journal directory, NATS reachability and login (with a deadline),
    credential and TLS files, GPU backends, and the slurm.conf lines that
    should point to hookscope-hook.  Exit status 1 if any check FAILs.

    Example:

        hookscope doctor --slurm-conf /etc/slurm/slurm.conf --nats nats://collector:4222
    """)
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), help="hookscope.toml (default $HOOKSCOPE_CONFIG, then /etc/hookscope/hookscope.toml)")
    @click.option("--slurm-conf", type=click.Path(dir_okay=False), help="slurm.conf to inspect (default /etc/slurm/slurm.conf or the configless cache)")
    @click.option("--journal", type=click.Path(file_okay=False), help="journal directory (default from config)")
    @click.option("--nats", help="NATS URL(s), comma separated (default from config)")
    @click.option("--creds", type=click.Path(dir_okay=False), help="NATS creds file")
    @click.option("--hook-dir", multiple=True, type=click.Path(), help="extra hook directory to check (repeatable)")
    @click.option("--deadline", default=2.0, show_default=True, type=float, help="seconds per network/driver call")
    @click.option("--no-nats", is_flag=True, help="skip the NATS checks")
    @click.option("--json", "as_json", is_flag=True, help="print the checks as JSON")
    def doctor(config_path, slurm_conf, journal, nats, creds, hook_dir, deadline, no_nats, as_json):
        s, pre = resolve(config_path, slurm_conf, journal, nats, creds, hook_dir, deadline, no_nats)
        results = run_checks(s, pre)
        counts = summary(results)
        if as_json:
            import json

            click.echo(json.dumps({"checks": [asdict(r) for r in results], "summary": counts}, indent=2))
        else:
            for r in results:
                click.echo(r.line())
            click.echo(f"\n{counts[OK]} ok, {counts[WARN]} warning(s), {counts[FAIL]} failure(s)")
        raise SystemExit(1 if counts[FAIL] else 0)

    return doctor


doctor = _make_command()

"""Helpers for the security tests: a test CA and certificates (openssl CLI),
nats-server configs with hookscope's generated authorization and TLS, and
small nats-py clients.  Everything is real: the openssl binary, nats-server."""

from __future__ import annotations

import asyncio
import importlib.util
import ssl
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_gen_auth():
    """deploy/nats/gen_auth.py is a script, not a package module."""
    spec = importlib.util.spec_from_file_location("hookscope_gen_auth", ROOT / "deploy/nats/gen_auth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_pki(d: Path) -> dict[str, Path]:
    """CA, a server cert for 127.0.0.1/localhost, and a client cert, all EC P-256
    (fast to generate).  Returns paths by name."""
    d.mkdir(parents=True, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=hookscope test CA", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=hookscope-{name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    return {k: d / v for k, v in {
        "ca": "ca.pem", "server_cert": "server.pem", "server_key": "server.key",
        "client_cert": "client.pem", "client_key": "client.key"}.items()}


def tls_block(pki: dict[str, Path], verify: bool = True) -> str:
    return (f'tls {{\n  cert_file: "{pki["server_cert"]}"\n  key_file: "{pki["server_key"]}"\n'
            f'  ca_file: "{pki["ca"]}"\n  verify: {"true" if verify else "false"}\n  timeout: 3\n}}\n')


def client_tls(pki: dict[str, Path], with_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if with_cert:
        ctx.load_cert_chain(str(pki["client_cert"]), str(pki["client_key"]))
    return ctx


async def connect(url: str, errors: list | None = None, **kw):
    """nats-py connect that fails fast instead of retrying forever."""
    import nats

    async def on_error(e):
        if errors is not None:
            errors.append(e)

    opts = dict(connect_timeout=3, allow_reconnect=False, max_reconnect_attempts=0,
                error_cb=on_error)
    opts.update(kw)
    return await nats.connect(url, **opts)


def run(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout))

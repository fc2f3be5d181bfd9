"""The parsed-config cache of :mod:`emitter.config` (marshal files).

Importing tomllib costs 4-30 ms, more than a hook, so a validated parse is kept
per (euid, config path) in a directory only that user owns, keyed by the
file's identity and mtime/ctime.  An entry is written only after the file
passed the trust check, so the last entry is also the last *trusted* version
of the file: what the hook falls back to when the file turns untrusted.
"""

import os

#: Marks cache entries written after the trust check passed (see cache_last).
TRUSTED_TAG = "trusted-v1"


def cache_file(config_path):
    """One cache file per (euid, config path): concurrent users of other files never thrash it."""
    d = os.environ.get("HOOKSCOPE_CACHE_DIR")
    if not d:
        if os.geteuid() == 0:
            d = "/run/hookscope"
        else:
            rt = os.environ.get("XDG_RUNTIME_DIR")
            if not rt:
                return None
            d = os.path.join(rt, "hookscope")
    from emitter.journal import _sha256

    key = _sha256(os.fsencode(config_path)).hexdigest()[:16]
    return os.path.join(d, f"config.{os.geteuid()}.{key}.marshal")


def cache_get(stamp):
    """The cached config for ``stamp``, trusted only if we own it and nobody else can write it."""
    path = cache_file(stamp[0])
    if path is None:
        return None
    got = cache_read(path)
    return got[1] if got is not None and got[0] == stamp else None


def cache_read(path):
    """(stamp, cfg) from a cache file that only we own and can write, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        dst = os.stat(os.path.dirname(path))
        euid = os.geteuid()
        if st.st_uid != euid or st.st_mode & 0o077 or dst.st_uid != euid or dst.st_mode & 0o022:
            return None
        import marshal

        data = b""
        while True:
            b = os.read(fd, 1 << 16)
            if not b:
                break
            data += b
        got_stamp, cfg = marshal.loads(data)
        return got_stamp, cfg
    except (OSError, ValueError, EOFError, TypeError):
        return None
    finally:
        os.close(fd)


def cache_put(stamp, cfg):
    """Best effort: a cache that cannot be written only costs the next hook a parse."""
    path = cache_file(stamp[0])
    if path is None:
        return
    import marshal

    try:
        data = marshal.dumps((stamp, cfg))
    except ValueError:  # a value marshal cannot hold (TOML datetimes): no cache
        return
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        cache_trim(os.path.dirname(path))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


CACHE_KEEP = 32


def cache_trim(d):
    """Keep the newest few entries: one per config path, and a node has one or two."""
    try:
        names = [n for n in os.listdir(d) if n.endswith(".marshal")]
        if len(names) < CACHE_KEEP:
            return
        names.sort(key=lambda n: os.stat(os.path.join(d, n)).st_mtime_ns)
        for n in names[: len(names) - CACHE_KEEP + 1]:
            os.unlink(os.path.join(d, n))
    except OSError:
        pass


def cache_last(config_path):
    """The last config parsed from ``config_path`` while it was trusted, or None."""
    path = cache_file(os.path.abspath(config_path))
    if path is None:
        return None
    got = cache_read(path)
    if got is None:
        return None
    stamp, cfg = got
    return cfg if isinstance(stamp, tuple) and stamp and stamp[-1] == TRUSTED_TAG else None

"""What of a broken config file hookscope-hook and hookscope exec still obey.

Split from :mod:`emitter.config` (only the error path needs it): a typo in one
[runner] key must not stop the hook from running the site's own directories,
so every key that validates on its own is kept.  Never a file another user
could have written: then the last trusted version (the parse cache) or nothing.
"""

import os

from emitter import config as cf
from emitter.configcache import cache_last


def salvage_config(path=None):
    """What of a config file that failed ``load_config`` is still usable.

    A typo in one key must not stop the hook from running the site's own
    directories (a failing hook drains the node): keep every [runner] key that
    validates on its own, drop the rest.  An unparsable file gives ``{}``.
    """
    p, _ = cf.config_path(path)
    if os.geteuid() == 0 and os.path.exists(p) and cf._untrusted(p):
        # Never obey a file another user could have written, not even in part:
        # its [runner.dirs] would choose what root runs.
        return cache_last(p) or {}
    try:
        with open(p, "rb") as f:
            data = f.read()
    except OSError:  # missing or unreadable: nothing to salvage, and no tomllib to pay for
        return {}
    try:
        import tomllib

        cfg = tomllib.loads(data.decode("utf-8"))
    except ValueError:  # not UTF-8, invalid TOML
        return {}
    section = cfg.get("runner")
    good = {}
    if isinstance(section, dict):
        for key, value in section.items():
            try:
                cf.validate_runner({key: value}, p)
            except cf.ConfigError:
                continue
            good[key] = value
    cfg["runner"] = good
    return cfg

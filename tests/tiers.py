"""Test tiers that need the machine's help: real Slurm (root) and a real browser.

A developer without the prerequisites gets a skip with the reason printed
(pytest -ra shows it).  Under CI=true a missing tier is a failure: CI must run
every tier.
"""

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, reason: str) -> None:
    """Skip (developer) or fail (CI) unless ``ok``."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI=true requires this tier, but: {reason}", pytrace=False)
    pytest.skip(reason)


def slurm_missing_reason():
    """None when a real Slurm tier can run here, else why not."""
    if os.geteuid() != 0:
        return "the real-Slurm tier needs root (slurmd runs prologs as root); run 'make test' as root"
    missing = [b for b in ("slurmctld", "slurmd", "munged", "scontrol", "sbatch") if not shutil.which(b)
               and not os.path.exists(f"/usr/sbin/{b}")]
    if missing:
        return ("Debian's Slurm is not installed (missing: " + ", ".join(missing)
                + "); 'make test' installs it as root via deploy/install-sysdeps.sh")
    return None


def require_slurm():
    r = slurm_missing_reason()
    require(r is None, r or "")


CHROMIUM = os.environ.get("HOOKSCOPE_CHROMIUM", "/usr/bin/chromium")


def browser_missing_reason():
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return (f"Debian chromium not found at {CHROMIUM}; 'make test' installs it as root "
                "via deploy/install-sysdeps.sh (or set HOOKSCOPE_CHROMIUM)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[test]')"
    return None


def require_browser():
    r = browser_missing_reason()
    require(r is None, r or "")

#!/usr/bin/env bash
# Install the Debian packages the integration tiers need: Slurm (22.05 on
# bookworm), munge, run-parts and Chromium.  Idempotent; run as root.
#
# The tests start their own munged/slurmctld/slurmd (own key, socket, ports and
# spool in a temp dir; see docs/slurm-tier.md), so a Slurm already running on
# this machine is left alone.  Only daemons this script itself just installed
# are stopped and disabled (Debian starts a package's service on install).
set -euo pipefail
# openjdk-17-jre-headless: Spark 4 (pyspark) for the archive interop tier (tests/interop).
pkgs=(slurmctld slurmd slurm-client munge debianutils chromium openjdk-17-jre-headless)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-sysdeps: need root to install ${missing[*]}" >&2
  exit 1
fi
echo "install-sysdeps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
for s in slurmctld slurmd munge; do
  case " ${missing[*]} " in *" $s "*) ;; *) continue ;; esac
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now "$s" >/dev/null 2>&1 || true
  else
    service "$s" stop >/dev/null 2>&1 || true
  fi
done
exit 0

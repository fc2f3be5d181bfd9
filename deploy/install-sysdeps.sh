#!/usr/bin/env bash
# Install the Debian packages the integration tiers need: Slurm (22.05 on
# bookworm), munge, run-parts and Chromium.  Idempotent; run as root.
set -euo pipefail
pkgs=(slurmctld slurmd slurm-client munge debianutils chromium)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-sysdeps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The packages' own services are not used: the tests start their own daemons.
for s in slurmctld slurmd munge; do
  (systemctl stop "$s" && systemctl disable "$s") >/dev/null 2>&1 || true
done
exit 0

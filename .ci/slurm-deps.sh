#!/usr/bin/env bash
# Install what tests/test_slurm.py needs to bring up a one-node SLURM cluster:
# Debian's slurm-wlm (slurmctld, slurmd, client commands) and munge.
# Idempotent: does nothing when the binaries are already there.  Run as root.
# No daemon is started or enabled here; the test starts its own, privately
# configured ones and stops them by PID.
set -euo pipefail

need=()
for bin in munged slurmctld slurmd sbatch squeue scontrol sinfo scancel; do
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || need+=("$bin")
done
if [ "${#need[@]}" -eq 0 ]; then
    echo "slurm-deps: slurm-wlm and munge already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "slurm-deps: missing ${need[*]}; run this script as root" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Some images ship without package lists; refresh only if needed.
apt-get install -y --no-install-recommends slurm-wlm munge \
    || { apt-get update -qq && apt-get install -y --no-install-recommends slurm-wlm munge; }
# The packages' postinst may start system daemons on systemd hosts; the tests
# use their own configuration and must not meet a system slurmd/munged.
for svc in slurmd slurmctld munge; do
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true
    fi
done
echo "slurm-deps: installed $(dpkg-query -W -f='${Package} ${Version}\n' slurm-wlm munge | tr '\n' ' ')"

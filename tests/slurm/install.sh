#!/usr/bin/env bash
# Install what start.sh needs for a one-node localhost SLURM cluster with
# working accounting (sacct) on Debian 12 (bookworm, slurm-wlm 22.05.8).
#
# Measured on a 2-core Debian 12 VM (packages not yet cached):
#   apt-get update                                               ~1 s
#   munge slurmctld slurmd slurm-client   (8 packages)          ~12 s
#   slurmdbd mariadb-server-core          (8 more packages)      ~5 s
#   whole script on a fresh machine: ~20 s
#
# --no-install-recommends keeps this to 16 small packages (no perl, no
# mariadb-server / mariadb-client, no systemd units started).  We only need
# `mariadbd` (in mariadb-server-core); start.sh runs it directly on a private
# data dir with --skip-grant-tables, so no `mariadb-install-db` is required.
set -euo pipefail

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: must run as root (apt-get)" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
time apt-get update -q
time apt-get install -y -q --no-install-recommends \
    munge slurmctld slurmd slurm-client slurmdbd mariadb-server-core

# Debian's postinst scripts may try to start the distro services (munge,
# slurmctld, slurmd, slurmdbd) via invoke-rc.d.  In containers policy-rc.d
# usually denies it; if one did start, it would use /etc/... paths and is
# unrelated to start.sh.  We do not touch them here.
for b in munged mungekey slurmctld slurmd slurmdbd mariadbd sbatch sacct sinfo scontrol; do
    command -v "$b" >/dev/null || { echo "install.sh: $b missing after install" >&2; exit 1; }
done
echo "install.sh: OK ($(slurmctld -V))"

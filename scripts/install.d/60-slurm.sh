#!/usr/bin/env bash
# Slurm (Debian's slurm-wlm 22.05) and munge for the live one-node cluster test of the
# sweep's Slurm executor (scripts/slurm-cluster), and the Docker SDK for its docker executor.
set -euo pipefail
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi
python3 -m pip install -q docker

#!/usr/bin/env bash
# podman (runc), debootstrap: the container smoke test builds and runs images for real.
# hadolint and Docker Compose v2 come from PyPI with the test extra (pyproject.toml).
set -euo pipefail
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc debootstrap uidmap >/dev/null
fi
podman --version

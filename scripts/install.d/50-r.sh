#!/usr/bin/env bash
# R with reticulate and jsonlite (Debian's packages, without the hundreds of recommends):
# the r-keras framework drives TensorFlow's environment (.venvs/tensorflow) from R.
set -euo pipefail
if ! command -v Rscript >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    r-base-core r-cran-reticulate r-cran-jsonlite >/dev/null
fi
Rscript --version

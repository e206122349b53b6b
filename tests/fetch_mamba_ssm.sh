#!/usr/bin/env bash
# Puts mamba-ssm's Python source in build/mamba_ssm_src, for the tests that run its Triton SSD
# kernels on CPU under Triton's interpreter (tests/models/test_ssd_mamba_ssm.py). Only the sdist
# is downloaded (no build: MAMBA_SKIP_CUDA_BUILD keeps pip's metadata step from compiling).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=2.3.2.post1
DEST=build/mamba_ssm_src
[ -d "$DEST/mamba_ssm" ] && exit 0
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
MAMBA_SKIP_CUDA_BUILD=TRUE python -m pip download -q --no-deps --no-binary :all: \
    --no-build-isolation -d "$TMP" "mamba-ssm==$VERSION"
tar xzf "$TMP"/mamba_ssm-"$VERSION".tar.gz -C "$TMP"
mkdir -p "$DEST"
mv "$TMP"/mamba_ssm-"$VERSION"/mamba_ssm "$DEST"/

#!/usr/bin/env bash
# Install titan_mimo's GPU stack on a GPU host that has no internet: download everything into a
# wheelhouse on a connected machine, carry the folder over, install from it there.
#
#   bash tools/wheelhouse.sh download WHEELHOUSE [--python 3.12] [--cuda 13] [--torch 2.11.0]
#        [--torch-index https://download.pytorch.org/whl/cu130]     # on a machine with internet
#   bash tools/wheelhouse.sh install WHEELHOUSE                      # on the GPU host, repo root
#
# `download` runs from the project's venv (the two source archives' metadata steps import torch;
# any OS): binary wheels for the GPU host's platform (manylinux x86_64,
# CPython --python), resolved against the host's torch (--torch, from --torch-index when given):
# torch and its CUDA wheels, titan_mimo's dependencies, the test tools, the benchmark peers' timm,
# FlashAttention-4 with its CUTLASS DSL wheels, Transformer Engine's core library (cu--cuda), and
# the two packages that have no wheel for the host as source archives (sdist/): mamba-ssm and
# Transformer Engine's PyTorch extension. Several GB, mostly torch's CUDA libraries.
#
# `install` (pip, CUDA toolkit headers for TE's extension) installs from WHEELHOUSE only:
# titan_mimo editable with its test extra, timm, FlashAttention-4 (nothing is compiled: its
# kernels compile on first use), mamba-ssm without its CUDA extension (MAMBA_SKIP_CUDA_BUILD:
# titan_mimo uses its Triton kernels only; seconds), and Transformer Engine's PyTorch extension,
# compiled against the installed torch (~2 min with 16 jobs on an H100 host). A torch already
# installed at a version the project accepts is kept.
#
# Versions are the ones the GPU tests and benchmarks were checked with; change them here.
set -euo pipefail
MAMBA_SSM=2.3.2.post1
FLASH_ATTN_4=4.0.0b36
TRANSFORMER_ENGINE=2.20.2
BUILD_TOOLS=(einops ninja packaging setuptools wheel pybind11)

usage() { sed -n '2,7p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
mode=$1 house=$2
shift 2

if [ "$mode" = download ]; then
  python_version=3.12 cuda=13 torch_version=2.11.0 torch_index=()
  while [ $# -gt 0 ]; do
    case $1 in
      --python) python_version=$2; shift 2 ;;
      --cuda) cuda=$2; shift 2 ;;
      --torch) torch_version=$2; shift 2 ;;
      --torch-index) torch_index=(--extra-index-url "$2"); shift 2 ;;
      *) usage ;;
    esac
  done
  cd "$(dirname "$0")/.."
  mkdir -p "$house/wheels" "$house/sdist"
  abi=cp${python_version/./}
  # The project's own dependencies and extras, read from pyproject.toml (the GPU extra's packages
  # are listed below with their pins, as two of them are not wheels).
  mapfile -t project < <(python3 -c '
import tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
print("\n".join(d for d in p["dependencies"] + p["optional-dependencies"]["test"] if not d.startswith("torch")))')
  binary=(--only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform linux_x86_64 --python-version "$python_version"
          --implementation cp --abi "$abi" --abi abi3 --abi none)
  python3 -m pip download -d "$house/wheels" "${torch_index[@]}" "${binary[@]}" \
    "torch==$torch_version" "${project[@]}" "${BUILD_TOOLS[@]}" timm "flash-attn-4==$FLASH_ATTN_4" \
    pydantic nvidia-cudnn-frontend
  # Transformer Engine's own packages without their dependencies: the metapackage would pull
  # another CUDA variant of the core library.
  python3 -m pip download -d "$house/wheels" --no-deps "${binary[@]}" \
    "transformer-engine==$TRANSFORMER_ENGINE" "transformer-engine-cu$cuda==$TRANSFORMER_ENGINE"
  MAMBA_SKIP_CUDA_BUILD=TRUE python3 -m pip download -d "$house/sdist" --no-deps --no-binary :all: \
    --no-build-isolation "mamba-ssm==$MAMBA_SSM" "transformer-engine-torch==$TRANSFORMER_ENGINE"
  echo "wheelhouse: $(ls "$house/wheels" | wc -l) wheels, $(ls "$house/sdist" | wc -l) source archives," \
       "$(du -sh "$house" | cut -f1) in $house"

elif [ "$mode" = install ]; then
  [ $# -eq 0 ] || usage
  house=$(cd "$house" && pwd)
  offline=(--no-index --find-links "$house/wheels")
  python3 -m pip install "${offline[@]}" -e ".[test]" "${BUILD_TOOLS[@]}" timm "flash-attn-4==$FLASH_ATTN_4" \
    pydantic nvidia-cudnn-frontend
  python3 -m pip install "${offline[@]}" --no-deps "transformer-engine==$TRANSFORMER_ENGINE" \
    "$(ls "$house"/wheels/transformer_engine_cu*.whl | head -1)"
  MAMBA_SKIP_CUDA_BUILD=TRUE python3 -m pip install "${offline[@]}" --no-deps --no-build-isolation \
    "$house"/sdist/mamba_ssm-"$MAMBA_SSM".tar.gz
  # TE's PyTorch extension is built against this torch: cuDNN's headers come with its wheel, the
  # cuDNN frontend's with nvidia-cudnn-frontend (under the environment's include/);
  # NVTE_NO_LOCAL_VERSION keeps the version equal to the core library's (TE checks they match).
  headers=$(python3 -c "
import nvidia.cudnn, os, sys
print(os.path.join(list(nvidia.cudnn.__path__)[0], 'include') + ':' + os.path.join(sys.prefix, 'include'))")
  start=$SECONDS
  CPLUS_INCLUDE_PATH=$headers${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH} NVTE_FRAMEWORK=pytorch \
    NVTE_PYTORCH_FORCE_BUILD=TRUE NVTE_NO_LOCAL_VERSION=1 MAX_JOBS=${MAX_JOBS:-16} \
    python3 -m pip install "${offline[@]}" --no-deps --no-build-isolation \
    "$house"/sdist/transformer_engine_torch-"$TRANSFORMER_ENGINE".tar.gz
  echo "wheelhouse: built transformer_engine_torch in $((SECONDS - start)) s"
  # Building a model with the mamba_ssm scan imports mamba-ssm's Triton kernels.
  python3 -c "
import torch, triton, flash_attn.cute.interface, transformer_engine.pytorch
from titan_mimo.models import build_model
build_model('hybrid_lm/debug', ssd_backend='mamba_ssm')
print('torch', torch.__version__, 'triton', triton.__version__, '| mamba-ssm, flash-attn-4, transformer-engine import')"
else
  usage
fi

# Sourced at the start of every device call: carried wheels, mamba-ssm source, titan_mimo imports.
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# titan_mimo.models / .torchtitan_ext live in top-level folders (setuptools package-dir); link
# them in place of an install on the bare machine.
ln -sfn "$PWD/models" titan_mimo/models; ln -sfn "$PWD/torchtitan_ext" titan_mimo/torchtitan_ext
export PYTHONPATH=/tmp/site:$PWD/.whl/mamba_src:$PWD
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
# mamba-ssm's Triton autotuning takes ~2 min per new shape: keep its results on disk so later
# processes of the same call reuse them.
export TRITON_CACHE_AUTOTUNING=1
# Compile caches in the working tree: a call can end with `tar czf $OUT/dcache.tgz .dcache`, and
# the next call (carrying .dcache, unpacked here) skips Inductor compiles and Triton autotuning.
mkdir -p .dcache/triton .dcache/inductor
export TRITON_CACHE_DIR=$PWD/.dcache/triton TORCHINDUCTOR_CACHE_DIR=$PWD/.dcache/inductor

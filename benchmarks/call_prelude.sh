# Sourced first by the device-call scripts (`source benchmarks/call_prelude.sh [fa4]`): the
# carried Triton autotuning cache, the carried wheels and mamba-ssm source (gpu_setup.sh), with
# "fa4" FlashAttention-4 too (fa4_setup.sh, after h100_call_g0.sh on the same machine start); the
# allocator setting every GPU run here uses; `B` (the bench, results appended to $OUT) and
# `run SECONDS CMD...` (CMD under a timeout, warning noise filtered out, then a pause).
cat .fa4b/dcache_triton.tgz.part-* | tar xz
source benchmarks/gpu_setup.sh
if [ "$1" = fa4 ]; then source benchmarks/fa4_setup.sh || exit 1; fi
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
run() { timeout "$1" "${@:2}" 2>&1 | grep -v "lspci\|UserWarning\|exe_args\|DeprecationWarning\|_warn_once\|register_pre_backward"; sleep 2; }

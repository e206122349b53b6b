# Device call F8 (session 4): the colocated step with and without FSDP on its 1-GPU mesh (the
# bench's "bare" loop: fp32 parameters, bf16 autocast, no FSDP, the same AdamW): how much of the
# host-bound step is FSDP2's per-parameter hook work (E4's trace: ~345 ms of FSDP:: ranges per
# profiled step). Two rounds in one machine start.
cat dcache_triton.tgz.part-* 2>/dev/null | tar xz
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --vision-eager --ac full --steps 8 --warmup 3"
set -x
timeout 300 python3 -m titan_mimo.bench --json $OUT/results.jsonl $M 2>&1 | grep -v lspci | tee $OUT/model_bare_1.log
timeout $((585 - SECONDS)) python3 -m titan_mimo.bench --json $OUT/results.jsonl $M 2>&1 | grep -v lspci | tee $OUT/model_bare_2.log
set +x
grep -hE "^\[|host time|overhead|Error|error" $OUT/*.log | head -40

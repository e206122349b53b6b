# Device call D5 (session 2): the 2B hybrid at batch 2 with MLP blocks checkpointed (call D3's
# best) with the bare loop and kernel + host profiles; the colocated whole model at batch 2 with
# the LM compiled and the ViT eager (compiled ViT blocks were slower in D4); the hybrid without
# resharding after forward (what-if). Compile caches tarred for a later call.
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
H="--module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --ac mlp --steps 5 --warmup 2"
set -x
timeout 330 $B $H --profile 2>&1 | tee $OUT/hybrid_b2_acmlp.log
timeout $((560 - SECONDS)) $B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 \
  --ssd-backend mamba_ssm --loss fused --compile --vision-eager --ac mlp --vision-ac full --no-bare --steps 5 --warmup 2 2>&1 | tee $OUT/model_b2.log
timeout $((560 - SECONDS)) $B $H --no-reshard --no-bare 2>&1 | tee $OUT/hybrid_b2_acmlp_noreshard.log
set +x
tar czf $OUT/dcache.tgz .dcache; ls -la $OUT/dcache.tgz
grep -hE "^\[|overhead|host time|profile:|Error|error" $OUT/*.log

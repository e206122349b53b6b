# Device call G3 (session 5, after G0 on a fresh machine): the GPU tests of the fa4 ops against
# an fp32 reference; FA4's host cost per call; profiles of the ViT-H/16 step with FA4, eager and
# compiled; FA4 without the class token (4096 tokens); the hybrid LM with FA4 and with SDPA.
source benchmarks/call_prelude.sh fa4
V="--module vision --model vit/h16 --batch 4 --image 1024 --no-bare --steps 10 --warmup 3 --attention fa4"
H="--module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2 --no-bare --ac mlp-half --no-reshard"
set -x
run 150 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/models/test_attention_kernels.py | tail -30 | tee $OUT/test_gpu.log
run 60 python3 benchmarks/fa4_host_bench.py | tee $OUT/fa4_host.log
run 70 $B $V --profile | tee $OUT/vision_fa4_profile.log
run 100 $B $V --compile --profile | tee $OUT/vision_fa4_compile_profile.log
run 60 $B $V --vision-args use_cls_token=false | tee $OUT/vision_fa4_nocls.log
run 200 $B $H --attention fa4 | tee $OUT/hybrid_fa4.log
run $((590 - SECONDS)) $B $H | tee $OUT/hybrid_sdpa.log
set +x
grep -hE "^\[|passed|failed|host per call|device busy" $OUT/*.log | head -40

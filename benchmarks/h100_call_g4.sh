# Device call G4 (session 5, after G0 on a fresh machine): FA4 with head dims padded to a multiple
# of 32 (its Hopper backward's dq is wrong at 80, G3); the GPU tests; attention at the ViT shape;
# the ViT-H/16 step with SDPA and FA4, eager and compiled; the 2B hybrid after the collection that
# follows the first step (G2/G3: 68.9 GiB and 10 allocator retries against F5's 67.8 GiB, none).
source benchmarks/call_prelude.sh fa4
V="--module vision --model vit/h16 --batch 4 --image 1024 --no-bare --steps 10 --warmup 3"
H="--module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --loss fused --compile --steps 5 --warmup 2 --no-bare --ac mlp-half --no-reshard"
set -x
run 120 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/models/test_attention_kernels.py | tail -25 | tee $OUT/test_gpu.log
run 60 python3 benchmarks/attention_bench.py --head-dims 80 | grep -E "fa4|cudnn|T=" | tee $OUT/attn_vit.log
run 130 $B $H | tee $OUT/hybrid_sdpa.log
run 60 $B $V | tee $OUT/vision_sdpa.log
run 60 $B $V --attention fa4 | tee $OUT/vision_fa4.log
run 90 $B $V --attention fa4 --compile | tee $OUT/vision_fa4_compile.log
run $((585 - SECONDS)) $B $H --attention fa4 | tee $OUT/hybrid_fa4.log
set +x
grep -hE "^\[|passed|failed" $OUT/*.log | head -40

# Device call G5 (session 5, after G0 on a fresh machine): FA4 with its Hopper backward fixed at
# import (flash-attention PR 2896; head dim 80 unpadded); the GPU tests; attention at the ViT
# shape; the ViT-H/16 step with SDPA and FA4, eager and compiled, batch 4 and 8; the colocated
# whole model with FA4 and with SDPA.
source benchmarks/call_prelude.sh fa4
V="--module vision --model vit/h16 --batch 4 --image 1024 --no-bare --steps 10 --warmup 3"
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --vision-eager --ac full --no-bare --steps 5 --warmup 2"
set -x
run 120 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/models/test_attention_kernels.py | tail -25 | tee $OUT/test_gpu.log
run 60 python3 benchmarks/attention_bench.py --head-dims 80 | grep -E "fa4|cudnn" | grep -v pad | tee $OUT/attn_vit.log
run 60 $B $V | tee $OUT/vision_sdpa.log
run 60 $B $V --attention fa4 | tee $OUT/vision_fa4.log
run 90 $B $V --attention fa4 --compile | tee $OUT/vision_fa4_compile.log
run 90 $B $V --attention fa4 --compile --batch 8 | tee $OUT/vision_fa4_compile_b8.log
run 130 $B $M --attention fa4 | tee $OUT/model_fa4.log
run $((585 - SECONDS)) $B $M | tee $OUT/model_sdpa.log
set +x
grep -hE "^\[|passed|failed" $OUT/*.log | head -40

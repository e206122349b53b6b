# Device call K4 (session 9, after h100_call_g0.sh on a fresh machine start): the attention GPU
# tests with the read-back fix (FA4's backward at the kernel's head-dim tile, 80), the backward
# variants again, and the ViT at batch 12 as committed now.
source benchmarks/call_prelude.sh fa4 || exit 1
V="--module vision --model vit/h16 --image 1024 --no-bare --steps 8 --warmup 3 --compile --attention fa4 --no-reshard --batch 12"
set -x
run 200 python3 -m pytest -q -p no:cacheprovider tests/models/test_attention_kernels.py 2>&1 | tail -4 | tee $OUT/test_attention.log
run 150 python3 benchmarks/fa4_bwd_tiles.py | tee $OUT/fa4_bwd_tiles.log
run $((585 - SECONDS)) $B $V | tee $OUT/vision_fa4_nr_b12_readback.log
set +x
grep -hE "^\[|^tile|^shape|passed|failed|rror" $OUT/*.log | head -20

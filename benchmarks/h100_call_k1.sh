# Device call K1 (session 9, after h100_call_g0.sh on the same machine start): FA4's Hopper
# backward at head dim 80 with the dq accumulator at the kernel's tile (80) against the round-up
# fix (96), and its tile configurations (benchmarks/fa4_bwd_tiles.py); then titan_mimo's ViT at
# batch 12 as committed now (the accumulator fix).
# Ran at commit e512440 (its accumulator fix, which K1 found wrong, was removed after K1).
source benchmarks/call_prelude.sh fa4 || exit 1
V="--module vision --model vit/h16 --image 1024 --no-bare --steps 8 --warmup 3 --compile --attention fa4 --no-reshard"
set -x
run 300 python3 benchmarks/fa4_bwd_tiles.py | tee $OUT/fa4_bwd_tiles.log
run $((585 - SECONDS)) $B $V --batch 12 | tee $OUT/vision_fa4_nr_b12_tile80.log
set +x
grep -hE "^\[|^tile|^shape|rror" $OUT/*.log | head -20

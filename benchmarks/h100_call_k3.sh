# Device call K3 (session 9, after h100_call_g0.sh on a fresh machine start): FA4's backward
# with the kernel's head-dim tile at 80 and only the dq read-back changed (K1's tile80 gave
# garbage gradients), then a profile of the ViT at batch 12 as committed (the round-up fix).
source benchmarks/call_prelude.sh fa4 || exit 1
V="--module vision --model vit/h16 --image 1024 --no-bare --steps 6 --warmup 3 --compile --attention fa4 --no-reshard"
set -x
run 240 python3 benchmarks/fa4_bwd_tiles.py --variants tile96,tile80b,tile80b_128 | tee $OUT/fa4_bwd_tiles.log
run $((585 - SECONDS)) $B $V --batch 12 --profile --profile-top 30 | tee $OUT/vision_fa4_nr_b12_profile.log
set +x
grep -hE "^\[|^tile|^shape|rror" $OUT/*.log | head -20

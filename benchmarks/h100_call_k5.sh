# Device call K5 (session 9, right after K4 on the same machine start): the ViT at batch 12 with
# Inductor's coordinate-descent tuning of its generated kernels, then with its multi-kernel
# reductions (persistent and looped both generated, the faster picked): K3's profile has the
# layer norms' looped reductions at 2-3x their memory-bandwidth time.
source benchmarks/call_prelude.sh fa4 || exit 1
V="--module vision --model vit/h16 --image 1024 --no-bare --steps 8 --warmup 3 --compile --attention fa4 --no-reshard --batch 12"
set -x
TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 run 330 $B $V | tee $OUT/vision_fa4_nr_b12_cdt.log
TORCHINDUCTOR_MULTI_KERNEL=1 run $((585 - SECONDS)) $B $V | tee $OUT/vision_fa4_nr_b12_mk.log
set +x
grep -hE "^\[|rror" $OUT/*.log | head -20

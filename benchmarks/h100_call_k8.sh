# Device call K8 (session 9, after h100_call_g0.sh on a fresh machine start): the peer (timm's
# ViT-H/16 compiled, batch 12) and titan_mimo's ViT at batch 12 with the bench's
# --coordinate-descent-tuning (K5/K6 set it through TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1).
source benchmarks/call_prelude.sh fa4 || exit 1
V="--module vision --model vit/h16 --image 1024 --no-bare --steps 8 --warmup 3 --compile --attention fa4 --no-reshard --batch 12"
set -x
(cd benchmarks && run 300 python3 vit_anchor.py 1024:12:compile) | tee $OUT/timm_compile_b12.log
run $((585 - SECONDS)) $B $V --coordinate-descent-tuning | tee $OUT/vision_fa4_nr_b12_cdt.log
set +x
grep -hE "^\[|^timm|rror" $OUT/*.log | head -20

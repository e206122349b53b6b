# Device call K6 (session 9, right after K5 on the same machine start): the peer (timm's
# ViT-H/16 compiled, batch 12), and titan_mimo's ViT as committed again, same machine start.
source benchmarks/call_prelude.sh fa4 || exit 1
V="--module vision --model vit/h16 --image 1024 --no-bare --steps 8 --warmup 3 --compile --attention fa4 --no-reshard --batch 12"
set -x
(cd benchmarks && run 300 python3 vit_anchor.py 1024:12:compile) | tee $OUT/timm_compile_b12.log
TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 run $((585 - SECONDS)) $B $V | tee $OUT/vision_fa4_nr_b12_cdt.log
set +x
grep -hE "^\[|^timm|rror" $OUT/*.log | head -20

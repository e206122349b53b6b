# Device call H7 (session 6, after G0's script on a fresh machine): the vision peer at batch 12
# (timm's ViT-H/16, compiled and eager) in the same machine start as titan_mimo's ViT with FA4,
# compiled blocks and gathered parameters kept (session 5's best, 45.4% at batch 12 in G8).
source benchmarks/call_prelude.sh fa4
V="--module vision --model vit/h16 --image 1024 --no-bare --steps 8 --warmup 3 --compile --attention fa4 --no-reshard"
set -x
run 120 $B $V --batch 12 | tee $OUT/vision_fa4_nr_b12.log
(cd benchmarks && run 200 python3 vit_anchor.py 1024:12:compile) | tee $OUT/timm_compile_b12.log
(cd benchmarks && run $((585 - SECONDS)) python3 vit_anchor.py 1024:12) | tee $OUT/timm_eager_b12.log
set +x
grep -hE "^\[|^timm|rror" $OUT/*.log | head -20

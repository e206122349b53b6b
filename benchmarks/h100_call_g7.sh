# Device call G7 (session 5, after G0 on a fresh machine): the vision peer (timm's ViT-H/16,
# eager and compiled) in the same machine start as titan_mimo's ViT with FA4, compiled blocks and
# gathered parameters kept to the backward, at batch 4 and 8.
source benchmarks/call_prelude.sh fa4
V="--module vision --model vit/h16 --image 1024 --no-bare --steps 10 --warmup 3 --compile --attention fa4 --no-reshard"
set -x
run 90 $B $V --batch 8 | tee $OUT/vision_fa4_nr_b8.log
run 60 $B $V --batch 4 | tee $OUT/vision_fa4_nr_b4.log
(cd benchmarks && run 60 python3 vit_anchor.py 1024:4 1024:8) | tee $OUT/timm_eager.log
(cd benchmarks && run $((585 - SECONDS)) python3 vit_anchor.py 1024:4:compile 1024:8:compile) | tee $OUT/timm_compile.log
set +x
grep -hE "^\[|^timm" $OUT/*.log | head -20

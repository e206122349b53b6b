# Device call G8 (session 5, after G0 on a fresh machine): the ViT-H/16 with FA4, compiled blocks
# and gathered parameters kept at larger batches (the per-step costs that do not grow with the
# batch, AdamW and FSDP's copies, spread over more images), and batch 8 again in the same start.
source benchmarks/call_prelude.sh fa4
V="--module vision --model vit/h16 --image 1024 --no-bare --steps 8 --warmup 3 --compile --attention fa4 --no-reshard"
set -x
run 100 $B $V --batch 8 | tee $OUT/vision_fa4_nr_b8.log
run 100 $B $V --batch 10 | tee $OUT/vision_fa4_nr_b10.log
run $((420 - SECONDS)) $B $V --batch 12 | tee $OUT/vision_fa4_nr_b12.log
set +x
grep -hE "^\[" $OUT/*.log | head -20

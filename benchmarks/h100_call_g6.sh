# Device call G6 (session 5, after G0 on a fresh machine): the compiled ViT-H/16 with FA4 is
# host-bound (G3: device busy 66%; FSDP2's per-parameter all-gather copies are the largest host
# item), so keep its gathered parameters to the backward (--no-reshard: one all-gather per block
# and step) at batch 4 and 8, with and without the class token, beside SDPA.
source benchmarks/call_prelude.sh fa4
V="--module vision --model vit/h16 --image 1024 --no-bare --steps 10 --warmup 3 --compile"
set -x
run 90 $B $V --batch 4 --attention fa4 --no-reshard | tee $OUT/vision_fa4_nr_b4.log
run 90 $B $V --batch 4 --attention fa4 | tee $OUT/vision_fa4_b4.log
run 90 $B $V --batch 4 --no-reshard | tee $OUT/vision_sdpa_nr_b4.log
run 90 $B $V --batch 8 --attention fa4 --no-reshard | tee $OUT/vision_fa4_nr_b8.log
run 90 $B $V --batch 8 --attention fa4 --no-reshard --vision-args use_cls_token=false | tee $OUT/vision_fa4_nr_b8_nocls.log
run $((585 - SECONDS)) $B $V --batch 4 --attention fa4 --no-reshard --profile | tee $OUT/vision_fa4_nr_b4_profile.log
set +x
grep -hE "^\[|device busy" $OUT/*.log | head -40

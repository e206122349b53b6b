# Device call I2 (session 7): the trainer's loop now reads each step's loss, norm and stop flag one
# step late (no wait for the device on ordinary steps). The real trainer on the colocated 1-GPU
# config, alternating the default with training.skip_nonfinite_steps=true (which still waits for
# every step before its optimizer step: the loop as it was, plus a host decision), and the bench's
# same settings in the same call.
source benchmarks/call_prelude.sh
set -x
run 170 $T --job.dump_folder=/tmp/tr_a | tail -4; summ /tmp/tr_a/metrics.jsonl late_1
run 170 $T --training.skip_nonfinite_steps=true --job.dump_folder=/tmp/tr_b | tail -4; summ /tmp/tr_b/metrics.jsonl wait_1
run 120 $B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 8 --warmup 3 --no-reshard --memory-budget 0.85 --vision-ac full | tee $OUT/bench.log
run $((590 - SECONDS)) $T --job.dump_folder=/tmp/tr_c | tail -4; summ /tmp/tr_c/metrics.jsonl late_2
set +x

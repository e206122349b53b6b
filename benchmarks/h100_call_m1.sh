# Device call M1 (session 11, after h100_call_n0.sh on the same machine start, whose Triton and
# Inductor caches it reuses): where the unwrapped colocated trainer step (0.598 s, 39.5%) spends
# its time, and the settings that might close the last ~1.2% to 40%. The first run profiles step
# 10 kernels-only (its device-busy share is that of a normal step) and is also this machine's
# baseline (median of steps 4-13); then the LM's memory budget at 0.9 (the bench's), every second
# ViT block checkpointed instead of all (half the ViT's recompute, ~5 GiB more activations against
# a 63.1 GiB peak), and both.
source benchmarks/call_prelude.sh fa4 || exit 1
set -x
run 150 $T --job.dump_folder=/tmp/tr_p --metrics.profile_step=10 --metrics.profile_kernels_only=true > $OUT/trainer_profile.log 2>&1; grep -A45 "profile (trace" $OUT/trainer_profile.log | cut -c1-200 | head -50
summ /tmp/tr_p/metrics.jsonl trainer_profiled
run 110 $T --job.dump_folder=/tmp/tr_b --modules.language.memory_budget=0.9 | tail -1; summ /tmp/tr_b/metrics.jsonl trainer_b090
VA="--modules.vision.activation_checkpoint=selective --modules.vision.ac_every=2"
run 110 $T --job.dump_folder=/tmp/tr_c $VA | tail -1; summ /tmp/tr_c/metrics.jsonl trainer_vision_ac_half
run $((585 - SECONDS)) $T --job.dump_folder=/tmp/tr_d $VA --modules.language.memory_budget=0.9 | tail -1; summ /tmp/tr_d/metrics.jsonl trainer_b090_vision_ac_half
set +x
cat $OUT/summary.log

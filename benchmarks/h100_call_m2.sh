# Device call M2 (session 11, right after M1 on the same machine start): M1 found every second
# ViT block checkpointed 18 ms faster than all (0.585 vs 0.603 s median, +3 GiB at 66.1 GiB):
# how far that goes. The ViT with no checkpointing (~+6 GiB), every third block, and every second
# again (repeatability).
source benchmarks/call_prelude.sh fa4 || exit 1
set -x
run 150 $T --job.dump_folder=/tmp/tr_n --modules.vision.activation_checkpoint=none | tail -1; summ /tmp/tr_n/metrics.jsonl trainer_vision_ac_none
run 120 $T --job.dump_folder=/tmp/tr_3 --modules.vision.activation_checkpoint=selective --modules.vision.ac_every=3 | tail -1; summ /tmp/tr_3/metrics.jsonl trainer_vision_ac_third
run 120 $T --job.dump_folder=/tmp/tr_h --modules.vision.activation_checkpoint=selective --modules.vision.ac_every=2 | tail -1; summ /tmp/tr_h/metrics.jsonl trainer_vision_ac_half_again
run $((585 - SECONDS)) $T --job.dump_folder=/tmp/tr_n2 --modules.vision.activation_checkpoint=none | tail -1; summ /tmp/tr_n2/metrics.jsonl trainer_vision_ac_none_again
set +x
cat $OUT/summary.log

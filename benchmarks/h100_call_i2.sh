# Device call I2 (session 7): the trainer's loop now reads each step's loss, norm and stop flag one
# step late (no wait for the device on ordinary steps). The real trainer on the colocated 1-GPU
# config, alternating the default with training.skip_nonfinite_steps=true (which still waits for
# every step before its optimizer step: the loop as it was, plus a host decision), and the bench's
# same settings in the same call.
source benchmarks/call_prelude.sh
T="torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/vlm_hybrid_1gpu.toml --training.steps=14"
summ() { python3 -c "
import json
rows = [json.loads(l) for l in open('$1')]
t = [r['step_time_s'] for r in rows if 4 <= r['step'] <= 13]
print('$2', 'steps 4-13 mean %.4f s' % (sum(t) / len(t)), 'min %.3f max %.3f' % (min(t), max(t)),
      'mem', {k: round(v['memory_gib'], 1) for k, v in rows[-1]['modules'].items()}, 'loss %.4f' % rows[-1]['loss'])
" | tee -a $OUT/summary.log; cp $1 $OUT/$2_metrics.jsonl; }
set -x
run 170 $T --job.dump_folder=/tmp/tr_a | tail -4; summ /tmp/tr_a/metrics.jsonl late_1
run 170 $T --training.skip_nonfinite_steps=true --job.dump_folder=/tmp/tr_b | tail -4; summ /tmp/tr_b/metrics.jsonl wait_1
run 120 $B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 8 --warmup 3 --no-reshard --memory-budget 0.85 --vision-ac full | tee $OUT/bench.log
run $((590 - SECONDS)) $T --job.dump_folder=/tmp/tr_c | tail -4; summ /tmp/tr_c/metrics.jsonl late_2
set +x

# Device call H4 (session 6): the real trainer on the colocated 1-GPU config, as shipped before
# this session (the LM checkpoints every block) and with the memory budget (LM: memory_budget
# 0.85; ViT: compiled, every block checkpointed; both keep gathered parameters), then the bench's
# same settings (H3: 684.7 ms).
source benchmarks/call_prelude.sh
T="torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/vlm_hybrid_1gpu.toml --training.steps=12"
set -x
run 220 $T --modules.language.activation_checkpoint=memory_budget --modules.language.memory_budget=0.85 --modules.vision.activation_checkpoint=full --modules.vision.compile=true --modules.language.reshard_after_forward=never --modules.vision.reshard_after_forward=never --job.dump_folder=/tmp/tr_budget | tail -14 | tee $OUT/trainer_budget.log
cp /tmp/tr_budget/metrics.jsonl $OUT/trainer_budget_metrics.jsonl
run 200 $T --job.dump_folder=/tmp/tr_full | tail -14 | tee $OUT/trainer_full.log
cp /tmp/tr_full/metrics.jsonl $OUT/trainer_full_metrics.jsonl
run $((585 - SECONDS)) $B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 5 --warmup 2 --no-reshard --memory-budget 0.85 --vision-ac full | tee $OUT/model_b085_vfull_nr.log
set +x
for f in $OUT/trainer_*_metrics.jsonl; do python3 -c "
import json, sys
rows = [json.loads(l) for l in open('$f')]
t = [r['step_time_s'] for r in rows if r['step'] >= 3]
print('$f'.split('/')[-1], 'steps 3-%d' % rows[-1]['step'], 'mean %.3f s' % (sum(t) / len(t)), 'min %.3f max %.3f' % (min(t), max(t)),
      'mem', {k: round(v['memory_gib'], 1) for k, v in rows[-1]['modules'].items()}, 'loss %.4f' % rows[-1]['loss'])
"; done

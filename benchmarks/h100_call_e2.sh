# Device call E2 (session 3): GPU tests of this session's changes; the colocated whole model
# after the merge path lost its device syncs (E1's setting, then cheaper checkpointing); the
# same model through the real trainer (torchrun, train_configs/vlm_hybrid_1gpu.toml).
tar xzf dcache.tgz 2>/dev/null
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --vision-eager --no-bare --steps 5 --warmup 2"
set -x
timeout 120 python3 -m pytest -q -x tests/models/test_vision_model.py tests/models/test_mimo.py tests/test_build.py 2>&1 | tee $OUT/tests.log
timeout 150 $B $M --ac full --sync-debug --profile 2>&1 | tee $OUT/model_acfull.log
timeout 150 $B $M --ac mlp --vision-ac full 2>&1 | tee $OUT/model_acmlp.log
timeout $((570 - SECONDS)) torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/vlm_hybrid_1gpu.toml \
  --training.steps=10 --job.dump_folder=/tmp/trainer 2>&1 | tee $OUT/trainer.log
cp /tmp/trainer/metrics.jsonl $OUT/trainer_metrics.jsonl
set +x
python3 -c "
import json; r=[json.loads(l) for l in open('$OUT/trainer_metrics.jsonl')]
t=[x['step_time_s'] for x in r[3:]]; print('trainer steps 4-%d: mean step %.1f ms' % (len(r), 1e3*sum(t)/len(t)), [round(x,3) for x in t])"
grep -hE "passed|failed|^\[|host time|busy|synchronising|^    x|Error|error" $OUT/*.log | grep -v "^    x.*report_syncs"

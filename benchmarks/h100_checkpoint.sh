# Device call (one H100): checkpointing on a GPU. (1) async save + resume of the debug model,
# colocated on one GPU (NCCL default group + the checkpoint's gloo group): losses after resume vs
# straight. (2) the time a save blocks the loop, sync vs async, for a ~0.3B-parameter LM
# (attn_1b shape, 8 layers, vocab 32768; 3.5 GB of weights + AdamW states per checkpoint).
source benchmarks/gpu_setup.sh
set -o pipefail
T="torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/debug_cpu.toml --metrics.log_freq=1 --metrics.enable_tensorboard=false --checkpoint.enable=true"
D="--training.steps=6 --checkpoint.interval=3 --checkpoint.async_mode=async"
timeout 150 $T $D --job.dump_folder=/tmp/straight 2>&1 | grep -v Warn | tee $OUT/straight.log | grep -E "^step|titan_mimo"
mkdir -p /tmp/resumed/checkpoint && cp -r /tmp/straight/checkpoint/step-3 /tmp/resumed/checkpoint/
timeout 150 $T $D --job.dump_folder=/tmp/resumed 2>&1 | grep -v Warn | tee $OUT/resumed.log | grep -E "^step|titan_mimo"
M="--modules.language.model=hybrid_lm/attn_1b --modules.language.model_args.layer_pattern=*-*-*-*- --modules.language.model_args.vocab_size=32768 --training.seq_len=2048 --training.global_batch_size=4 --training.micro_batch_size=2 --data.image_sizes=[[16,16]] --training.mixed_precision=bf16 --training.steps=7 --checkpoint.interval=3 --checkpoint.keep_latest_k=1"
for mode in disabled async; do
  timeout 200 $T $M --checkpoint.async_mode=$mode --job.dump_folder=/tmp/$mode 2>&1 | grep -v Warn | tee $OUT/$mode.log | grep -E "^step|titan_mimo"
  du -sh /tmp/$mode/checkpoint/step-7
done
cp /tmp/straight/metrics.jsonl $OUT/straight.jsonl; cp /tmp/resumed/metrics.jsonl $OUT/resumed.jsonl
cp /tmp/disabled/metrics.jsonl $OUT/sync.jsonl; cp /tmp/async/metrics.jsonl $OUT/async.jsonl
python3 - <<'PY'
import json, os
out = os.environ["OUT"]
rd = lambda f: {r["step"]: r for r in map(json.loads, open(f"{out}/{f}"))}
a, b = rd("straight.jsonl"), rd("resumed.jsonl")
print("resume: steps", sorted(b), "max |loss diff| vs straight:", max(abs(a[s]["loss"] - b[s]["loss"]) for s in b))
for name in ("sync", "async"):
    r = rd(f"{name}.jsonl")
    print(name, "checkpoint_s:", [round(x["checkpoint_s"], 3) for x in r.values() if "checkpoint_s" in x],
          "step_time_s (steps 2-7):", [round(x["step_time_s"], 3) for s, x in r.items() if s > 1])
PY

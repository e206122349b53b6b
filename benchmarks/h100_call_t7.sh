# Device call T7 (session 11, after T6 on the same machine start): TE's attention against SDPA's
# at the ViT's shape (h100_call_t8.sh, run again alone as T8: see there), and the trainer with the
# ViT on SDPA in the same machine start as T6's TE run.
source benchmarks/h100_call_t8.sh || exit 1
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
T="torchrun --nproc-per-node 1 -m titan_mimo.train --config train_configs/vlm_hybrid_1gpu.toml --training.steps=14"
timeout 300 $T --job.dump_folder=/tmp/tr_sd --modules.vision.model_args.attention_backend=sdpa 2>&1 | grep "^step    14"
python3 -c "
import json, statistics
rows = [json.loads(l) for l in open('/tmp/tr_sd/metrics.jsonl')]
t = [r['step_time_s'] for r in rows if 4 <= r['step'] <= 13]
print('trainer_vision_sdpa steps 4-13 mean %.4f s median %.4f' % (sum(t) / len(t), statistics.median(t)), 'min %.3f max %.3f' % (min(t), max(t)), 'loss %.4f' % rows[-1]['loss'])
" | tee $OUT/summary.log; cp /tmp/tr_sd/metrics.jsonl $OUT/trainer_vision_sdpa_metrics.jsonl

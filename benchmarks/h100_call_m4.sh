# Device call M4 (session 11, after M3 on the same machine start): the new 1-GPU config (the ViT
# checkpoints nothing) over 40 steps (memory steady, no allocator retries), with the ViT on SDPA
# (the config's documented fallback when flash-attn-4 is missing: does it still fit?), and with
# parallelism.fsdp_one_rank (the documented FSDP variant).
source benchmarks/call_prelude.sh fa4 || exit 1
set -x
run 150 $T --job.dump_folder=/tmp/tr_40 --training.steps=40 | tail -1; summ /tmp/tr_40/metrics.jsonl trainer_40_steps
python3 -c "
import json; rows = [json.loads(l) for l in open('/tmp/tr_40/metrics.jsonl')]
print('memory by step', [round(r['modules']['vision']['memory_gib'], 2) for r in rows][::5], 'keys', sorted(rows[-1]['modules']['vision']))"
run 150 $T --job.dump_folder=/tmp/tr_s2 --modules.vision.model_args.attention_backend=sdpa | tail -1; summ /tmp/tr_s2/metrics.jsonl trainer_sdpa
run $((585 - SECONDS)) $T --job.dump_folder=/tmp/tr_fs --parallelism.fsdp_one_rank=true | tail -3; summ /tmp/tr_fs/metrics.jsonl trainer_fsdp_one_rank
set +x
cat $OUT/summary.log

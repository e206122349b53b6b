# Device call N0 (session 11; a fresh checkout, so no carried Triton cache): the first piece of
# the FlashAttention-4 wheels into /tmp/fa4 (as h100_call_g0.sh), then the 1-GPU trainer with the
# ViT on SDPA, which fills the Triton autotuning cache (mamba-ssm's SSD kernels, ~2 min cold) and
# Inductor's cache for the LM's blocks in .dcache on the held machine for the calls that follow,
# and sends the Triton cache back in pieces for later sessions (carried in .fa4b).
mkdir -p /tmp/fa4 && cp .fa4a/part-aa /tmp/fa4/ && ls -la /tmp/fa4 && nvidia-smi -L
source benchmarks/call_prelude.sh || exit 1
set -x
run 420 $T --job.dump_folder=/tmp/tr_s --modules.vision.model_args.attention_backend=sdpa | tail -1; summ /tmp/tr_s/metrics.jsonl trainer_sdpa
set +x
tar cz .dcache/triton | split -b 15M - $OUT/dcache_triton.tgz.part-
ls -la $OUT; cat $OUT/summary.log

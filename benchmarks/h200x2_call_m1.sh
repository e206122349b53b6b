# Device call M1 (session 3, 2 x H200): issue 7 on two GPUs. NCCL layout invariance at debug
# size (vision 1 | language 1 and colocated dp2 against one GPU, fp32 and bf16); then ViT-H/16
# + hybrid_2b at 1664^2 images (the ViT about as heavy as the LM per sample) as vision 1 |
# language 1 against colocated FSDP over both GPUs, same global batch.
tar xzf dcache.tgz 2>/dev/null
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
nvidia-smi -L
set -x
[ -n "$SKIP_INVARIANCE" ] || timeout 200 python3 benchmarks/multi_gpu.py invariance --gpus 2 --out $OUT/mgpu 2>&1 | tee $OUT/invariance.log
timeout $((580 - SECONDS)) python3 benchmarks/multi_gpu.py throughput --gpus 2 --image 1664 --steps 7 --warmup 3 --timeout 270 \
  --out $OUT/mgpu -- --training.global_batch_size=8 2>&1 | tee $OUT/throughput.log
set +x
for f in $OUT/mgpu/throughput/*/; do
  echo "== $(basename $f)" >> $OUT/tails.log; tail -5 $f/torchrun.log >> $OUT/tails.log
  sed "s/^/$(basename $f) /" $f/metrics.jsonl >> $OUT/metrics_all.txt
done
cp $OUT/mgpu/*.json $OUT/; rm -rf $OUT/mgpu; ls $OUT

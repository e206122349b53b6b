# Device call M4 (session 3, 2 x H200): call M3 again, now that mock data is generated one step ahead in a background thread (the vision rank of the split layout drew 16 images of 1664^2 in front of every step) (ViT-H/16 + hybrid_2b at 1664^2,
# vision 1 | language 1 against colocated over both GPUs) without activation checkpointing
# (H200 memory allows it in both layouts) and with 8 micro-batches per step in the split layout
# (global batch 16), so the cross-mesh pipeline's fill and drain weigh less.
tar xzf dcache.tgz 2>/dev/null
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
set -o pipefail
set -x
timeout 330 python3 benchmarks/multi_gpu.py throughput --gpus 2 --image 1664 --steps 6 --warmup 3 --timeout 150 \
  --out $OUT/mgpu -- --training.global_batch_size=16 --modules.vision.activation_checkpoint=none \
  --modules.language.activation_checkpoint=none 2>&1 | tee $OUT/throughput.log
set +x
for f in $OUT/mgpu/throughput/*/; do
  echo "== $(basename $f)" >> $OUT/tails.log; tail -5 $f/torchrun.log >> $OUT/tails.log
  sed "s/^/$(basename $f) /" $f/metrics.jsonl >> $OUT/metrics_all.txt
done
cp $OUT/mgpu/*.json $OUT/; rm -rf $OUT/mgpu; ls $OUT

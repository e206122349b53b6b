# Device call C: hybrid and colocated model at batch 1 (batch 2 x 8192 ran out of memory in call B),
# then per-block torch.compile of ours and the peers.
source benchmarks/gpu_setup.sh
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
set -x
timeout 150 $B --module language --model hybrid_lm/hybrid_2b --batch 1 --seq 8192 --ssd-backend mamba_ssm --profile 2>&1 | tee $OUT/hybrid_2b.log
timeout 80 $B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 1 --seq 8192 --image 1024 --ssd-backend mamba_ssm 2>&1 | tee $OUT/model.log
timeout 100 $B --module language --model hybrid_lm/attn_1b --batch 2 --seq 8192 --compile --no-bare --steps 5 --warmup 2 2>&1 | tee $OUT/attn_1b_compile.log
timeout 90 $B --module vision --model vit/h16 --batch 4 --image 1024 --compile --no-bare --steps 5 --warmup 2 2>&1 | tee $OUT/vision_compile.log
(cd benchmarks && timeout 90 torchrun --nproc-per-node 1 tt_anchor.py 1B:2:8192:compile; timeout 70 python3 vit_anchor.py 1024:4:compile) 2>&1 | tee $OUT/peers_compile.log
set +x
grep -hE "^\[|overhead|^timm|^torchtitan|^titan_mimo|Error" $OUT/*.log

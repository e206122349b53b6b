# Device call B: eager runs of every module (with kernel profiles) and the Mamba2 mixer vs its peer.
source benchmarks/gpu_setup.sh
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
set -x
timeout 80 $B --module vision --model vit/h16 --batch 4 --image 1024 --profile 2>&1 | tee $OUT/vision.log
timeout 90 $B --module language --model hybrid_lm/attn_1b --batch 2 --seq 8192 --profile 2>&1 | tee $OUT/attn_1b.log
timeout 230 $B --module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --profile 2>&1 | tee $OUT/hybrid_2b.log
timeout 100 $B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm 2>&1 | tee $OUT/model.log
(timeout 50 python3 benchmarks/mixer_bench.py mamba_ssm; timeout 60 python3 benchmarks/mamba_anchor.py .whl/mamba_src --layer-only) 2>&1 | tee $OUT/mixer.log
set +x
grep -hE "^\[|overhead|^timm|^torchtitan|^titan_mimo|^Mamba2|  mamba|passed|failed|Error" $OUT/*.log

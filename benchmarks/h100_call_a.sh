# Device call A: GPU parity test, eager runs of every module with kernel profiles, eager peers.
source benchmarks/gpu_setup.sh
B="python3 -m titan_mimo.bench --json $OUT/results.jsonl"
set -x
(python3 -m pytest -q -p no:cacheprovider tests/models/test_ssd_kernels.py 2>&1 || python3 -c "import sys; sys.path.insert(0, 'tests/models'); import test_ssd_kernels as t; t.test_mamba_ssm_matches_torch_reference_bf16(); print('GPU parity test passed')") 2>&1 | tee $OUT/test_gpu.log
timeout 100 $B --module vision --model vit/h16 --batch 4 --image 1024 --profile 2>&1 | tee $OUT/vision.log
timeout 100 $B --module language --model hybrid_lm/attn_1b --batch 2 --seq 8192 --profile 2>&1 | tee $OUT/attn_1b.log
timeout 120 $B --module language --model hybrid_lm/hybrid_2b --batch 2 --seq 8192 --ssd-backend mamba_ssm --profile 2>&1 | tee $OUT/hybrid_2b.log
timeout 100 $B --module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm 2>&1 | tee $OUT/model.log
(timeout 40 python3 benchmarks/mixer_bench.py mamba_ssm; timeout 60 python3 benchmarks/mamba_anchor.py .whl/mamba_src --layer-only) 2>&1 | tee $OUT/mixer.log
(cd benchmarks && timeout 70 torchrun --nproc-per-node 1 tt_anchor.py 1B:2:8192 && timeout 40 python3 vit_anchor.py 1024:4) 2>&1 | tee $OUT/peers.log
set +x
grep -hE "^\[|overhead|^timm|^torchtitan|^titan_mimo|^Mamba2|passed|failed|Error" $OUT/*.log

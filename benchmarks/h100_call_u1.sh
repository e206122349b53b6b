# Device call U1 (session 11, after h100_call_g0.sh on a fresh machine start): every test file with
# CUDA-only tests, on the GPU with flash-attn-4 and mamba-ssm's kernels (Transformer Engine is not
# staged here: its tests ran in T6, before the FA4/TE checks were merged into one helper).
source benchmarks/call_prelude.sh fa4 || exit 1
timeout 540 python3 -m pytest -q -rs -p no:cacheprovider tests/models/test_attention_kernels.py \
  tests/models/test_ssd_kernels.py tests/models/test_ssd_mamba_ssm.py tests/models/test_vision_model.py \
  tests/models/test_mimo.py tests/test_optim.py tests/test_block_options.py 2>&1 | tee $OUT/gpu_tests.log | grep -v "warn\|Warn\|^  \|^$" | tail -25

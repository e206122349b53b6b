# Device call U2 (session 11, after h100_call_g0.sh on a fresh machine start): the attention tests
# with flash-attn-4 on the GPU once more, after the fa4/te GPU checks became shared helpers.
source benchmarks/call_prelude.sh fa4 || exit 1
timeout 400 python3 -m pytest -q -rs -p no:cacheprovider tests/models/test_attention_kernels.py 2>&1 | tee $OUT/attention_tests.log | grep -v "warn\|Warn\|^  \|^$" | tail -8

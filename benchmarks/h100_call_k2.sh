# Device call K2 (session 9, right after K1 on the same machine start): the ViT at batch 12 with
# the round-up fix instead (the accumulator fix disabled from the command line), then the peer
# (timm's ViT-H/16 compiled, batch 12) in the same machine start.
# Ran at commit e512440 (its accumulator fix, which K1 found wrong, was removed after K1).
source benchmarks/call_prelude.sh fa4 || exit 1
V="--module vision --model vit/h16 --image 1024 --no-bare --steps 8 --warmup 3 --compile --attention fa4 --no-reshard"
ROUND_UP="import runpy, sys; from titan_mimo.models import attention_kernels as ak; ak._fa4_backward_accumulator_at_kernel_tile = lambda fa4, install=True: None; sys.argv[0] = 'bench'; runpy.run_module('titan_mimo.bench', run_name='__main__')"
set -x
run 200 python3 -c "$ROUND_UP" --json $OUT/results.jsonl $V --batch 12 | tee $OUT/vision_fa4_nr_b12_tile96.log
(cd benchmarks && run $((585 - SECONDS)) python3 vit_anchor.py 1024:12:compile) | tee $OUT/timm_compile_b12.log
set +x
grep -hE "^\[|^timm|rror" $OUT/*.log | head -20

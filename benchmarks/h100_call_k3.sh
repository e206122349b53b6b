# Device call K3 (session 9, right after K2 on the same machine start): the attention GPU tests
# (FA4 against SDPA at head dims 80 and 72 with the accumulator fix), then a profile of the ViT
# at batch 12: where its time goes now.
source benchmarks/call_prelude.sh fa4 || exit 1
V="--module vision --model vit/h16 --image 1024 --no-bare --steps 6 --warmup 3 --compile --attention fa4 --no-reshard"
set -x
run 240 python3 -m pytest -q -p no:cacheprovider tests/models/test_attention_kernels.py | tail -5 | tee $OUT/test_attention.log
run $((585 - SECONDS)) $B $V --batch 12 --profile --profile-top 30 | tee $OUT/vision_fa4_nr_b12_profile.log
set +x
grep -hE "^\[|passed|failed|rror" $OUT/*.log | head -20

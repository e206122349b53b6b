# Device call L2 (session 10): Inductor's C++ wrapper (TORCHINDUCTOR_CPP_WRAPPER=1: the compiled
# graphs launch their kernels from C++ instead of generated Python) on the host-bound colocated
# bench, Y13's settings.
source benchmarks/call_prelude.sh || exit 1
M="--module model --model vit/h16+hybrid_lm/hybrid_2b --batch 2 --seq 8192 --image 1024 --ssd-backend mamba_ssm --loss fused --compile --no-bare --steps 6 --warmup 3 --no-reshard --memory-budget 0.9 --vision-ac full"
set -x
TORCHINDUCTOR_CPP_WRAPPER=1 run $((580 - SECONDS)) $B $M | tee $OUT/model_cpp_wrapper.log
set +x
grep -hE "^\[|host time|rror" $OUT/*.log | cut -c1-300 | head -20

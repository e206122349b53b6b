# Sourced after gpu_setup.sh in device calls that run attention_backend = "fa4": FlashAttention-4
# (flash-attn-4 4.0.0b36) and its CUTLASS DSL wheels (nvidia-cutlass-dsl 4.8.1 with the cu12
# libraries, apache-tvm-ffi, torch-c-dlpack-ext, quack-kernels), ~100 MB as one tar of wheels.
# That is more than one call may carry (64 MiB), so it travels in two pieces: call G0 leaves
# part-aa in /tmp/fa4 on the held machine, the next call carries part-ab (and all.sha) in .fa4b.
# Wheels beside part-ab in .fa4b (nvidia-cutlass-dsl-libs-core: cutlass.cute's Python source,
# missing from the earlier tar) install together with the tar's.
if [ ! -e /tmp/fa4site/.installed ]; then
  rm -rf /tmp/fa4site
  cat /tmp/fa4/part-aa .fa4b/part-ab > /tmp/fa4/all.tar &&
    (cd /tmp/fa4 && sha256sum -c "$OLDPWD/.fa4b/all.sha") &&
    mkdir -p /tmp/fa4/whl && tar xf /tmp/fa4/all.tar -C /tmp/fa4/whl &&
    { cp .fa4b/*.whl /tmp/fa4/whl/ 2>/dev/null; true; } &&
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/fa4site \
      /tmp/fa4/whl/*.whl && touch /tmp/fa4site/.installed || return 1
fi
# --target installs skip .pth files: nvidia-cutlass-dsl's puts its dsl_packages folder on sys.path.
export PYTHONPATH=/tmp/fa4site:/tmp/fa4site/nvidia_cutlass_dsl/dsl_packages:$PYTHONPATH
python3 -c "import flash_attn.cute.interface as m; print('flash-attn-4 imports from', m.__file__)" || return 1

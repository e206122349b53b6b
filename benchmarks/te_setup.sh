# Sourced after gpu_setup.sh in device calls that run attention_backend = "te": NVIDIA Transformer
# Engine 2.20.2 for PyTorch on the bare GPU machine, from carried pieces (nothing can be
# downloaded there). The core wheel (transformer-engine-cu13, 277 MB: libtransformer_engine.so)
# is more than one call may carry, so calls T1-T6 (h100_call_t*.sh) each copy one piece (.te0 ..
# .te5: part-aa .. part-af; .te0 also has the `transformer-engine` Python wheel, pydantic and the
# cuDNN frontend's headers as wheels, core.sha, and tetorch.tar, the `transformer-engine-torch`
# source) into /tmp/te on the held machine. The PyTorch extension (transformer_engine_torch, ~33
# C++ files) has no wheel on PyPI: it is built there against the machine's torch, detached
# (setsid), so that a later call can wait for it if one call's time runs out.
# Then PYTHONPATH has /tmp/tesite. TE_BUILD_WAIT: seconds to wait for the build (default 480).
if [ ! -e /tmp/tesite/.installed ]; then
  if [ ! -e /tmp/te/build.started ]; then
    (cd /tmp/te && cat part-* > core.whl && sha256sum -c core.sha &&
      mv core.whl transformer_engine_cu13-2.20.2-py3-none-manylinux_2_28_x86_64.whl) || return 1
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/tesite \
      /tmp/te/*.whl || return 1
    mkdir -p /tmp/te/src && tar xf /tmp/te/tetorch.tar -C /tmp/te/src || return 1
    cudnn_inc=$(python3 -c "import nvidia.cudnn, os; print(os.path.join(list(nvidia.cudnn.__path__)[0], 'include'))")
    touch /tmp/te/build.started
    # NVTE_PYTORCH_FORCE_BUILD: no try at downloading a prebuilt wheel; NVTE_NO_LOCAL_VERSION: the
    # version is 2.20.2 as the core's (TE checks they match).
    setsid bash -c "cd /tmp/te/src/transformer-engine-torch_* &&
      CPLUS_INCLUDE_PATH=$cudnn_inc:/tmp/tesite/include NVTE_PYTORCH_FORCE_BUILD=TRUE \
      NVTE_NO_LOCAL_VERSION=1 NVTE_FRAMEWORK=pytorch MAX_JOBS=16 PYTHONPATH=/tmp/tesite:$PYTHONPATH \
      python3 -m pip install -v --no-build-isolation --no-deps --no-index --no-cache-dir \
        --target /tmp/te/ext . > /tmp/te/build.log 2>&1; echo \$? > /tmp/te/build.rc" < /dev/null &
  fi
  waited=0
  while [ ! -e /tmp/te/build.rc ] && [ $waited -lt "${TE_BUILD_WAIT:-480}" ]; do sleep 10; waited=$((waited + 10)); done
  if [ ! -e /tmp/te/build.rc ]; then
    echo "te_setup: transformer_engine_torch still building after ${waited}s (log: /tmp/te/build.log); call again"
    grep -c "Building\|\[[0-9]*/[0-9]*\]" /tmp/te/build.log; tail -3 /tmp/te/build.log; return 1
  fi
  if [ "$(cat /tmp/te/build.rc)" != 0 ]; then
    grep -B2 -A8 -m3 "error" /tmp/te/build.log | head -60; tail -20 /tmp/te/build.log; return 1
  fi
  cp -r /tmp/te/ext/. /tmp/tesite/ && touch /tmp/tesite/.installed
  echo "te_setup: built transformer_engine_torch in ~$(( $(stat -c %Y /tmp/te/build.rc) - $(stat -c %Y /tmp/te/build.started) ))s"
fi
export PYTHONPATH=/tmp/tesite:$PYTHONPATH
python3 -c "import transformer_engine.pytorch as te, transformer_engine_torch as ext; print('transformer_engine imports from', te.__file__, ext.__file__)" || return 1

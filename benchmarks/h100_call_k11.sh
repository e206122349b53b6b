# Device call K11 (session 9, fresh machine start): why K10's launch cache replayed nothing on
# Triton 3.6 (each cached launch's refusal), with the ops' host time.
source benchmarks/call_prelude.sh || exit 1
python3 -c "import triton.compiler.compiler as c, inspect; print('run is', type(inspect.getattr_static(c.CompiledKernel, 'run', None)).__name__); print(inspect.getsource(c.CompiledKernel.launch_metadata)[:600])"
run 150 python3 benchmarks/scan_op_overhead.py | tee $OUT/scan_op_overhead.log

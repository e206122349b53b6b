# Device call J9 (session 8): host cost of the scan's custom ops through the dispatcher vs their
# bodies called directly (J8's cProfile put 3 ms per call in torch's custom-op backend wrapper).
source benchmarks/call_prelude.sh
set -x
run 200 python3 benchmarks/scan_op_overhead.py | tee $OUT/scan_op_overhead.log
set +x

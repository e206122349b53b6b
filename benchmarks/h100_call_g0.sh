# Device call G0 (session 5): the first piece of the FlashAttention-4 wheels (benchmarks/fa4_setup.sh)
# stays in /tmp/fa4 on the held machine for the calls that follow.
mkdir -p /tmp/fa4 && cp .fa4a/part-aa /tmp/fa4/ && ls -la /tmp/fa4 && nvidia-smi -L

# Device call T4 (session 11): stage Transformer Engine piece .te3 in /tmp/te on the held machine
# (benchmarks/te_setup.sh says why it travels in pieces).
mkdir -p /tmp/te && cp .te3/* /tmp/te/ && ls /tmp/te && du -sh /tmp/te

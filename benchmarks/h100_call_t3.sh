# Device call T3 (session 11): stage Transformer Engine piece .te2 in /tmp/te on the held machine
# (benchmarks/te_setup.sh says why it travels in pieces).
mkdir -p /tmp/te && cp .te2/* /tmp/te/ && ls /tmp/te && du -sh /tmp/te

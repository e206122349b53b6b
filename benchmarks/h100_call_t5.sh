# Device call T5 (session 11): stage Transformer Engine piece .te4 in /tmp/te on the held machine
# (benchmarks/te_setup.sh says why it travels in pieces).
mkdir -p /tmp/te && cp .te4/* /tmp/te/ && ls /tmp/te && du -sh /tmp/te

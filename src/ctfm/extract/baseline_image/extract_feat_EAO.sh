#!/bin/sh
# Task 2 (embedding aggregation optimization) entry point of the ctfm baseline container: one [D, h, w, l]
# token map per case. Same inputs and outputs as extract_feat_LP.sh.
set -eu
exec python3 /opt/ctfm/hu_stats.py --task eao --input /workspace/inputs --output /workspace/outputs

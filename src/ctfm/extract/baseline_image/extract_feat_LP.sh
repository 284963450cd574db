#!/bin/sh
# Task 1 (linear probing) entry point of the ctfm baseline container: one [D] vector per case.
# The runner starts it as the reference does, `/bin/bash -c "sh extract_feat_LP.sh"` in /workspace:
# every /workspace/inputs/<case>.nii.gz (with $MASKS_DIR/<case>.nii.gz for an ROI disease) ->
# /workspace/outputs/<case>.h5 (dataset y_hat).
set -eu
exec python3 /opt/ctfm/hu_stats.py --task lp --input /workspace/inputs --output /workspace/outputs

#!/bin/sh
# Task 1 (linear probing) entry point of the ctfm baseline container: one [D] vector per case.
# Reads $INPUT_DIR/<case>.nii.gz (and $MASKS_DIR/<case>.nii.gz when set), writes $OUTPUT_DIR/<case>.h5 (y_hat).
set -eu
exec python3 /opt/ctfm/hu_stats.py --task lp

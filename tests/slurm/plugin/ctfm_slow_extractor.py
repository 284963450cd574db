"""A test plug-in extractor: hu-stats, slowed down by ``CTFM_SLOW_S`` seconds per volume, so a Slurm task can
be cancelled or run past its time limit in the middle of its cases (the same outputs as hu-stats)."""

from __future__ import annotations

import os
import time

from ctfm.extract.extractors.hu_stats import HuStatsExtractor


class SlowExtractor(HuStatsExtractor):
    name = "slow-hu-stats"

    def extract(self, images, masks, spacing, task):  # type: ignore[no-untyped-def]
        time.sleep(float(os.environ.get("CTFM_SLOW_S", "0")) * len(images))
        return super().extract(images, masks, spacing, task)

"""bench/data_pipeline.py runs end to end, compares like for like and reports every figure (people judge its ratios,
not tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inat_zoo.data.crop_decode import JPEG_DECODER

BENCH = Path(__file__).resolve().parents[1] / "bench" / "data_pipeline.py"


def test_data_pipeline_bench_reports_all_ratios(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    args = [sys.executable, str(BENCH), "--images", "100", "--size", "32", "--rounds", "1", "--repeats", "1"]
    args += ["--batch-size", "4"]
    done = subprocess.run([*args, "--json"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["images"] == 90 and result["image_size"] == 32  # the stratified 10% goes to validation
    for key in ("baseline_images_per_s", "no_cache_images_per_s", "cached_images_per_s", "decode_only_images_per_s"):
        assert result[key] > 0, key
    for name in ("no_cache", "cached", "decode_only"):  # each ratio is against the baseline measured in this run
        quotient = result[f"{name}_images_per_s"] / result["baseline_images_per_s"]
        assert result[f"ratio_{name}"] == pytest.approx(quotient, abs=0.01), name
    # like for like: the baseline crops and flips each photo as the trainer's seeded loader does (different crops
    # would differ by ~1 in normalised units; PIL's and torch's resizes of the same crop by a few hundredths)
    assert result["pixel_diff_vs_baseline"] < 0.2
    assert "RandomResizedCropAndInterpolation" in result["transform"]
    assert result["jpeg_decoder"] == JPEG_DECODER  # the decoder this install has, named in the figures
    assert not list(tmp_path.glob("inat_zoo_bench_*"))  # the generated photos and caches were removed

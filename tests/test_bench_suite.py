"""The GPU suite's dry run (tiny profile, CPU, small settings) runs every case end to end, so a
GPU session's one call cannot fail on a typo. Timings are printed, never asserted."""
import os
import subprocess
import sys

from tests.ui_helpers import ROOT

from bench.suite import CASES


def test_dry_run_covers_every_case_and_the_comparison(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", DES_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    before = (ROOT / "bench" / "RESULTS.md").read_text()
    out = subprocess.run([sys.executable, "-m", "bench.suite", "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    for case in CASES:
        assert any(line.startswith(case + " ") for line in out.stdout.splitlines()), (case, out.stdout)
    assert "whole app resident" in out.stdout and "first edit" in out.stdout and "suite done" in out.stdout
    assert "per UNet evaluation (NCHW / channels-last" in out.stdout
    assert "sdedit: ours" in out.stdout and "iir-net: ours" in out.stdout  # against diffusers
    assert (ROOT / "bench" / "RESULTS.md").read_text() == before  # a dry run records nothing

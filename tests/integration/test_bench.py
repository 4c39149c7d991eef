"""`make bench` keeps working: a tiny round of it, figures printed, none asserted (speed
and memory are the benchmark's to measure, never a test's)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(240)


def test_the_benchmark_delivers_with_both_programs_and_reports_ratios() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "herald_dev.bench", "--recipients", "200", "--rounds", "1",
         "--connections", "2"], capture_output=True, text=True, timeout=220,
        env={**os.environ, "COLUMNS": "160"})
    print(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "herald / baseline" in done.stdout
    assert done.stdout.count("round 1 ") == 2  # each program ran, and herald sent them all

"""The image's install steps without Docker: scripts/install-image.sh, which the Dockerfile
runs, into a fresh virtual environment; then the commands the chart's pods run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]


def test_the_dockerfile_installs_with_the_script_and_runs_as_a_numeric_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN .*install-image\.sh deps /opt/herald$", dockerfile, re.M)
    assert re.search(r"^RUN .*install-image\.sh app /opt/herald$", dockerfile, re.M)
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M)
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-\w+$", dockerfile, re.M)
    final = dockerfile.rsplit("FROM ", 1)[1]
    assert "pip install" not in final and "apt-get" not in final  # nothing built there


def test_the_image_install_gives_herald_without_the_dev_extras(tmp_path: Path) -> None:
    prefix = tmp_path / "opt-herald"
    env = {**os.environ, "PYTHON": sys.executable}
    for step in ("deps", "app"):
        done = subprocess.run(["sh", "scripts/install-image.sh", step, str(prefix)], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=500)
        assert done.returncode == 0, done.stderr
    herald = str(prefix / "bin" / "herald")
    for command in ([], ["operator"], ["job"]):
        done = subprocess.run([herald, *command, "--help"], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"usage: herald {' '.join(command)}".rstrip())
    # What a pod without its flags gets: a clear message and exit 2.
    done = subprocess.run([herald, "job"], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"]})
    assert done.returncode == 2 and "--namespace" in done.stderr
    # The dev stack's packages stay out of the image; the zone data is in.
    python = str(prefix / "bin" / "python")
    check = ("import importlib.util as u, zoneinfo; zoneinfo.ZoneInfo('Asia/Seoul'); "
             "print(u.find_spec('aiosmtpd'), u.find_spec('cryptography'), "
             "u.find_spec('tzdata') is not None)")
    done = subprocess.run([python, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["None", "None", "True"], done.stderr
    done = subprocess.run([herald, "dev", "up"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "dev extras" in done.stderr

"""The source layout keeps the standard library's `operator` reachable."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE_ROOTS = ["dev", "operator", "jobs"]


def test_no_folder_is_importable_as_operator() -> None:
    # With the repository root and every source root first on the path, `operator` must
    # still be the standard library's module.
    paths = [str(ROOT), *(str(ROOT / r) for r in SOURCE_ROOTS)]
    code = "import operator, sys; print(operator.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", f"import sys; sys.path[:0] = {paths!r}; {code}"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout.strip()
    assert not out.startswith(str(ROOT)), out
    assert not (ROOT / "operator" / "__init__.py").exists()

"""A test of the suite itself: the precision-dependent tests (marker `precision`) hold whichever precision
they ask for, not only the one `auto` resolves to on the machine that runs the suite. Each explicit
`--precision` this CPU can run (bf16 is emulated, and slow, without AVX-512 BF16: the marked tests are small)
re-runs them in a pytest of its own."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
MARKED_FILES = ("test_runs.py", "test_bench.py")  # where the tests marked `precision` live


def test_the_marked_files_hold_every_precision_dependent_test():
    """So that the runs below leave none out."""
    for path in TESTS.glob("test_*.py"):
        if path.name not in MARKED_FILES and path.name != Path(__file__).name:
            assert "pytest.mark.precision" not in path.read_text(), f"{path.name}: add it to MARKED_FILES"
    for name in MARKED_FILES:
        assert "pytest.mark.precision" in (TESTS / name).read_text(), name


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_precision_dependent_tests_hold_under_each_precision(precision, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "precision", "--precision", precision, "-p", "no:cacheprovider",
         "--basetemp", str(tmp_path / "basetemp"), *(str(TESTS / name) for name in MARKED_FILES)],
        capture_output=True, text=True, timeout=1200, cwd=TESTS.parent)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1] and " failed" not in done.stdout.splitlines()[-1], done.stdout

"""scripts/gpu_campaign.sh: the prepared GPU command refuses bad input with one clear line, before any run."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script(tmp_path, *args, **env):
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_campaign.sh"), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env})


def test_a_missing_data_archive_is_named_and_nothing_runs(tmp_path):
    done = _script(tmp_path, CIFAR_TL_DATA=str(tmp_path / "nowhere.tar.gz"))
    assert done.returncode == 2
    assert "no data archive at" in done.stderr and "prepare" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert (tmp_path / "out" / "gpu-campaign.log").read_text() == done.stderr  # that line only: no run began


def test_minutes_must_be_a_whole_number(tmp_path):
    done = _script(tmp_path, MINUTES="eight")
    assert done.returncode == 2 and "MINUTES must be a whole number" in done.stderr


def test_an_unknown_recipe_stops_before_training_and_packs_nothing(tmp_path, jpeg_archive):
    done = _script(tmp_path, "no_such_recipe", CIFAR_TL_DATA=str(jpeg_archive))
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    log = (tmp_path / "out" / "gpu-campaign.log").read_text()
    assert "cifar-tl: error: " in log and "no_such_recipe" in log
    assert "no record was written" in log
    assert not (tmp_path / "out" / "gpu-records.tar.gz").exists()

"""scripts/gpu_check.sh: valid bash, and without a GPU it says so and stops (exit 2) before any check."""

import subprocess

import pytest
import torch
from conftest import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def test_gpu_check_is_valid_bash():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run its checks")
def test_gpu_check_without_a_gpu_stops_with_a_clear_message(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr
    assert not (tmp_path / "out" / "summary.txt").exists()

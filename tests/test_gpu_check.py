"""benchmarks/gpu_check.py runs end to end: on a tiny model on the CPU with --tiny (every check passes), and it
skips cleanly (exit 0) when asked for the real check on a machine without CUDA."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_passes_every_check(gpu_check, tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        assert gpu_check.main(["--tiny", "--workdir", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    for check in ("load", "logits bf16", "npo masters move", "npo loss falls", "rmu masters move",
                  "rmu loss falls", "fused diagnostics"):
        assert f"PASS {check}:" in out
    assert "FAIL" not in out and "tokens/s forward" in out and "all checks passed" in out


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the real check would run")
def test_without_cuda_it_skips_cleanly(gpu_check, capsys):
    assert gpu_check.main([]) == 0
    assert capsys.readouterr().out.startswith("skipped: no CUDA")

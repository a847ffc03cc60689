"""benchmarks/gpu_check.sh at its smallest size on the CPU: the paper profile's path (tiny Qwen3, last-token pooling,
one process, then torchrun with 2 gloo processes, encoding) runs end to end, offline, in about a minute."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_on_cpu():
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "CUDA_VISIBLE_DEVICES": "",
        "GPU_CHECK_EXAMPLES": "16",
        "GPU_CHECK_TEXTS": "200",
        "GPU_CHECK_THREADS": "1",
        "GPU_CHECK_TIMEOUT": "240",
    }
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd="/", env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    lines = r.stdout.strip().splitlines()
    assert lines[-1] == "gpu_check: ok", r.stdout
    out = "\n".join(lines)
    assert "gpu_check: device cpu, GPUs 0" in out
    assert "train, 1 process (cpu)" in out and "train, torchrun (2 CPU processes, gloo)" in out
    assert "encode (cpu): 200 texts" in out and "texts/s" in out

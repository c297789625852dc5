"""Running a module under `accelerate launch --cpu --num_processes N` from a test (a subprocess)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = Path(sys.executable).with_name("accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(module: str, args: list[str], processes: int, env: dict | None = None, timeout: int = 600):
    """`accelerate launch --cpu --num_processes N -m module args` (N = 1 runs plain python -m, the
    single-process command). Returns the CompletedProcess; output captured."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                    TOKENIZERS_PARALLELISM="false", **(env or {}))
    if processes == 1:
        cmd = [sys.executable, "-m", module, *args]
    else:
        # accelerate 1.15: `--cpu --num_processes N` starts N processes only through mpirun; torchrun's
        # launcher (--multi_gpu) with ACCELERATE_USE_CPU gives N CPU processes joined by gloo.
        full_env["ACCELERATE_USE_CPU"] = "true"
        cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "-m", module, *args]
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)

"""The trainers under `accelerate launch` with 2 CPU processes (gloo), tiny profile:
- the loss falls, and 2 processes with batch b follow the loss trajectory of 1 process with batch 2b
  (same data, same seed) within LOSS_RTOL: every sample's randomness comes from (seed, step, its
  global position), so only floating-point summation order differs (batched VAE/UNet calls of
  another size, DDP's all-reduce);
- a run killed (SIGKILL) after a checkpoint and resumed with `--resume latest` ends with the
  weights of the uninterrupted run within WEIGHT_ATOL.
The 2-process command is `accelerate launch --multi_gpu --num_processes 2` with ACCELERATE_USE_CPU
(tests/launch_helpers.py says why not `--cpu`)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from safetensors.torch import load_file

from tests.launch_helpers import ACCELERATE, ROOT, free_port, launch

LOSS_RTOL = 1e-3
WEIGHT_ATOL = 1e-5      # the same process count, killed and resumed: the same arithmetic
DP_WEIGHT_ATOL = 1e-3   # 2 x b against 1 x 2b after 6 AdamW steps at lr 3e-3: Adam divides each
# coordinate by its own gradient scale, so rounding differences in near-zero gradients move a
# weight by up to a fraction of lr per step (seen: 1.5e-4); training moves weights by ~lr per step.


def _picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (64, 64), tuple(int(v) for v in rng.integers(0, 255, 3)))
    ImageDraw.Draw(im).rectangle((10 + seed % 20, 12, 44, 50), fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
    return im


@pytest.fixture(scope="module")
def iir_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("accel_iir_data")
    for i, caption in enumerate(["a red cat", "a blue car", "sunset over the sea", "a green tree"]):
        _picture(30 + i).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(caption)
    return folder


@pytest.fixture(scope="module")
def cache_env(model_dir, tiny_models):
    tiny_models.sd()  # the tiny models are on disk before several processes load them
    return {"DES_CACHE_DIR": str(model_dir)}


def _iir_args(data, out, batch, *extra):
    return ["--data", str(data), "--out", str(out), "--steps", "6", "--batch", str(batch), "--lr", "3e-3",
            "--resolution", "64", "--profile", "tiny", "--roi", "whole", "--eval-every", "3", "--save-every", "2",
            "--workers", "0", "--quiet", *extra]


def _weights(folder):
    return load_file(str(folder / "diffusion_pytorch_model.safetensors"))


def _close(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def iir_runs(iir_data, cache_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("accel_iir")
    one = launch("engine.train.iir_net", _iir_args(iir_data, root / "one", 2), processes=1, env=cache_env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch("engine.train.iir_net", _iir_args(iir_data, root / "two", 1), processes=2, env=cache_env)
    assert two.returncode == 0, two.stderr[-3000:]
    return root, one, two


def test_iir_net_two_processes_follow_one_process_with_twice_the_batch(iir_runs):
    root, one, two = iir_runs
    a = json.loads((root / "one" / "trainer_state.json").read_text())
    b = json.loads((root / "two" / "trainer_state.json").read_text())
    assert a["processes"] == 1 and b["processes"] == 2
    assert "2 process(es) x batch 1" in two.stderr and two.stderr.count("mixed precision:") == 1  # main logs only
    assert "auto -> no" in two.stderr
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=LOSS_RTOL)
    evals = [v for _, v in b["eval_loss"]]
    assert evals[-1] < evals[0]  # the loss falls on the fixed batch
    assert _close(_weights(root / "one"), _weights(root / "two")) < DP_WEIGHT_ATOL


def _launch_and_kill_after(module, args, checkpoint, env):
    """Start a 2-process run and SIGKILL its process group once `checkpoint` is complete."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", ACCELERATE_USE_CPU="true", **env)
    cmd = [str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", module, *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 300
    try:
        while not (checkpoint / "progress.json").is_file():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.02)
    finally:
        for pid in _descendants(proc.pid) + [proc.pid]:  # torchrun's workers too: they outlive a killed launcher
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    time.sleep(1)
    assert not _descendants(proc.pid)


def _descendants(pid: int) -> list[int]:
    """Every process below pid (from /proc: the parent id is the 4th field of /proc/PID/stat)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids + [d for k in kids for d in _descendants(k)]


def test_iir_net_killed_after_a_checkpoint_resumes_to_the_same_weights(iir_runs, iir_data, cache_env):
    root = iir_runs[0]
    out = root / "killed"
    _launch_and_kill_after("engine.train.iir_net", _iir_args(iir_data, out, 1), out / "checkpoints" / "checkpoint-000002",
                           cache_env)
    from engine.train.accel import checkpoints

    time.sleep(3)
    stopped = checkpoints(out / "checkpoints")
    assert stopped and stopped[-1][0] < 6  # really stopped before the end (maybe before trainer_state.json)
    resumed = launch("engine.train.iir_net", _iir_args(iir_data, out, 1, "--resume", "latest"), processes=2,
                     env=cache_env)
    assert resumed.returncode == 0, [line for line in resumed.stderr.splitlines() if "rror" in line][:5]
    assert f"resumed from {stopped[-1][1]}" in resumed.stderr
    final = json.loads((out / "trainer_state.json").read_text())
    reference = json.loads((root / "two" / "trainer_state.json").read_text())
    assert final["finished"] and len(final["loss"]) == 6
    np.testing.assert_allclose(final["loss"], reference["loss"], rtol=LOSS_RTOL)
    assert _close(_weights(out), _weights(root / "two")) < WEIGHT_ATOL


# -- iEdit ------------------------------------------------------------------------------------------------
def _iedit_pairs(folder, n: int, side: int = 64):
    """n pairs over n + 1 generated images, each with its source and target masks (no CLIPSeg needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n + 1):
        _picture(50 + i).resize((side, side)).save(folder / f"im{i}.png")
    left, right = Image.new("L", (side, side), 0), Image.new("L", (side, side), 0)
    ImageDraw.Draw(left).rectangle((0, 0, side // 2, side), fill=255)
    ImageDraw.Draw(right).rectangle((side // 2, 0, side, side), fill=255)
    left.save(folder / "left.png")
    right.save(folder / "right.png")
    lines = [json.dumps({"source": f"im{i}.png", "target": f"im{i + 1}.png", "edit_prompt": f"a photo of a dog {i}",
                         "source_word": "cat", "target_word": "dog", "source_mask": "left.png",
                         "target_mask": "right.png"}) for i in range(n)]
    (folder / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "pairs.jsonl"


def _iedit_args(pairs, out, batch, *extra):
    return ["--pairs", str(pairs), "--out", str(out), "--steps", "6", "--batch", str(batch), "--lr", "5e-4",
            "--resolution", "64", "--profile", "tiny", "--save-every", "2", "--workers", "0", *extra]


def _iedit_state(out, step=6):
    folder = out / f"checkpoint-{step:06d}"
    return (json.loads((folder / "trainer_state.json").read_text()),
            load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")))


@pytest.fixture(scope="module")
def iedit_runs(cache_env, tmp_path_factory):
    root = tmp_path_factory.mktemp("accel_iedit")
    pairs = _iedit_pairs(root / "data", 6)
    one = launch("engine.train.iedit", _iedit_args(pairs, root / "one", 2), processes=1, env=cache_env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch("engine.train.iedit", _iedit_args(pairs, root / "two", 1), processes=2, env=cache_env)
    assert two.returncode == 0, two.stderr[-3000:]
    return root, pairs, one, two


def test_iedit_two_processes_follow_one_process_with_twice_the_batch(iedit_runs):
    root, _, one, two = iedit_runs
    (a, wa), (b, wb) = _iedit_state(root / "one"), _iedit_state(root / "two")
    assert [r["blocks"] for r in b["losses"]] == ["input", "middle"] * 3
    assert b["losses"][0]["pairs_local"] == a["losses"][0]["pairs_local"][:1]  # process 0: the first half
    np.testing.assert_allclose([r["loss"] for r in b["losses"]], [r["loss"] for r in a["losses"]], rtol=LOSS_RTOL)
    assert b["eval"][-1]["loss"] < b["eval"][0]["loss"]  # the loss falls (fixed pairs, timesteps and noise)
    assert two.stderr.count("eval loss") == 1  # the main process reports, the other stays quiet
    assert _close(wa, wb) < DP_WEIGHT_ATOL


def test_iedit_killed_after_a_checkpoint_resumes_to_the_same_weights(iedit_runs, cache_env):
    root, pairs, _, _ = iedit_runs
    out = root / "killed"
    _launch_and_kill_after("engine.train.iedit", _iedit_args(pairs, out, 1), out / "checkpoint-000002", cache_env)
    time.sleep(3)
    stopped = sorted(p.name for p in out.glob("checkpoint-*"))
    assert stopped and "checkpoint-000006" not in stopped  # really stopped before the end
    resumed = launch("engine.train.iedit", _iedit_args(pairs, out, 1, "--resume", "latest"), processes=2,
                     env=cache_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {stopped[-1]}" in resumed.stderr
    (a, wa), (b, wb) = _iedit_state(out), _iedit_state(root / "two")
    assert [r["step"] for r in a["losses"]] == list(range(1, 7))
    np.testing.assert_allclose([r["loss"] for r in a["losses"]], [r["loss"] for r in b["losses"]], rtol=LOSS_RTOL)
    assert _close(wa, wb) < WEIGHT_ATOL


_PEAK = """
import resource, sys
from engine.models import ModelCache
from engine.train import iedit as T
models = ModelCache("tiny", device="cpu")
T.train(T.TrainConfig(pairs=sys.argv[1], out=sys.argv[2], steps=2, resolution=256, save_every=2), models,
        progress=False)
print("PEAK_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def test_iedit_peak_memory_does_not_grow_with_the_pairs(cache_env, tmp_path):
    """Peak RSS of 2 training steps at 256 px with 8 and with 64 pairs: loading every pair up front
    would hold ~1.4 MB a pair (latents, target image, masks, embeddings), ~80 MB more for 64."""
    peaks = {}
    for n in (8, 64):
        pairs = _iedit_pairs(tmp_path / f"data{n}", n, side=256)
        done = subprocess.run([sys.executable, "-c", _PEAK, str(pairs), str(tmp_path / f"run{n}")], cwd=ROOT,
                              env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", **cache_env),
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        peaks[n] = int(done.stdout.split("PEAK_KB")[1].split()[0]) / 1024
    assert peaks[64] - peaks[8] < 30, peaks  # MB

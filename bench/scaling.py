"""Throughput at 1 and N processes under accelerate, tiny profile: the pair builder's images per
second and the trainers' steps per second, and the scaling ratio.

    python -m bench.scaling [--processes 2] [--images 8,40] [--steps 8] [--write]

- Pair builder (engine.train.iedit_pairs, captions from a file, a JSON lexicon): wall-clock of a
  small and a large folder of generated images; images per second = the difference in images over
  the difference in seconds, so process start and model loading cancel out.
- Trainers: engine.train.iedit (batch 1 per process) and engine.train.iir_net (batch 2 per process),
  --steps steps; steps per second from the median of the per-step times the trainers record
  (the first two steps dropped). With N processes a step trains N times the samples, so the
  scaling ratio is (samples/s at N) / (samples/s at 1), ideally N.
Processes beyond 1 run as `accelerate launch --multi_gpu --num_processes N` with ACCELERATE_USE_CPU
(N CPU processes joined by gloo). --write appends the table to bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 30)}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(module: str, args: list[str], processes: int) -> list[str]:
    if processes == 1:
        return [sys.executable, "-m", module, *args]
    return [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes",
            str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_port()), "-m", module, *args]


def run(module: str, args: list[str], processes: int) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="true")
    t0 = time.perf_counter()
    done = subprocess.run(command(module, args, processes), cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{module} failed with {processes} process(es): {done.stderr[-2000:]}")
    return time.perf_counter() - t0


def image_folder(folder: Path, n: int) -> tuple[Path, Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    captions = {}
    names = list(COLOURS)
    for i in range(n):
        colour, shape = names[i % 4], ("circle", "square")[(i // 4) % 2]
        im = Image.new("RGB", (64, 64), (240 - i % 7, 240, 240))
        (ImageDraw.Draw(im).ellipse if shape == "circle" else ImageDraw.Draw(im).rectangle)((16, 16, 48, 48),
                                                                                             fill=COLOURS[colour])
        im.save(folder / f"img{i:04d}.png")
        captions[f"img{i:04d}.png"] = f"a photo of a {colour} {shape}"
    caps = folder.parent / f"{folder.name}_captions.json"
    caps.write_text(json.dumps(captions))
    lex = folder.parent / "lexicon.json"
    lex.write_text(json.dumps({"nouns": {"circle": ["square"], "square": ["circle"]},
                               "adjectives": {c: [d for d in COLOURS if d != c] for c in COLOURS}}))
    return folder, caps, lex


def pair_builder(tmp: Path, sizes: tuple[int, int], processes: int) -> tuple[float, str]:
    seconds = {}
    for n in sizes:
        folder, caps, lex = image_folder(tmp / f"imgs{n}", n)
        args = ["--images", str(folder), "--out", str(tmp / f"pairs{n}_{processes}.jsonl"), "--captions", str(caps),
                "--lexicon", str(lex), "--profile", "tiny", "--device", "cpu"]
        seconds[n] = run("engine.train.iedit_pairs", args, processes)
    rate = (sizes[1] - sizes[0]) / max(1e-9, seconds[sizes[1]] - seconds[sizes[0]])
    return rate, " ".join(command("engine.train.iedit_pairs", args, processes)[-12:])


def _pairs_file(tmp: Path) -> Path:
    folder = tmp / "train_imgs"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(9):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a photo of a {list(COLOURS)[i % 4]} circle")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, 32, 64), fill=255)
    mask.save(tmp / "mask.png")
    lines = [json.dumps({"source": f"train_imgs/{i}.png", "target": f"train_imgs/{i + 1}.png",
                         "edit_prompt": "a photo of a dog", "source_mask": "mask.png", "target_mask": "mask.png"})
             for i in range(8)]
    (tmp / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return tmp / "pairs.jsonl"


def trainer(tmp: Path, name: str, steps: int, processes: int) -> tuple[float, str]:
    out = tmp / f"{name}_{processes}"
    if name == "iedit":
        args = ["--pairs", str(_pairs_file(tmp)), "--out", str(out), "--steps", str(steps), "--batch", "1",
                "--resolution", "64", "--profile", "tiny", "--save-every", str(steps), "--workers", "0"]
    else:
        _pairs_file(tmp)
        args = ["--data", str(tmp / "train_imgs"), "--out", str(out), "--steps", str(steps), "--batch", "2",
                "--resolution", "64", "--profile", "tiny", "--roi", "whole", "--save-every", str(steps),
                "--eval-every", str(steps), "--workers", "0", "--quiet"]
    run(f"engine.train.{'iedit' if name == 'iedit' else 'iir_net'}", args, processes)
    if name == "iedit":
        state = json.loads((out / f"checkpoint-{steps:06d}" / "trainer_state.json").read_text())
        times = [row["seconds"] for row in state["losses"]]
    else:
        times = json.loads((out / "trainer_state.json").read_text())["step_seconds"]
    return 1.0 / statistics.median(times[2:] or times), " ".join(command("x", args, processes)[-len(args) - 2:])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__.split("\n\n")[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--images", default="8,40", help="the small and the large folder (images)")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--write", action="store_true", help="append the table to bench/RESULTS.md")
    a = p.parse_args(argv)
    sizes = tuple(int(v) for v in a.images.split(","))
    if len(sizes) != 2 or sizes[0] >= sizes[1] or a.processes < 2 or a.steps < 4:
        print("error: --images SMALL,LARGE (SMALL < LARGE), --processes >= 2, --steps >= 4", file=sys.stderr)
        return 2
    n = a.processes
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        one, _ = pair_builder(tmp / "p1", sizes, 1)
        many, _ = pair_builder(tmp / f"p{n}", sizes, n)
        rows.append(("iedit_pairs (images/s)", one, many, many / one))
        for name, per_step in (("iedit", 1), ("iir_net", 2)):
            s1, _ = trainer(tmp / f"{name}1", name, a.steps, 1)
            sn, _ = trainer(tmp / f"{name}{n}", name, a.steps, n)
            rows.append((f"{name} (steps/s, batch {per_step} per process)", s1, sn, n * sn / s1))
    load = os.getloadavg()[0]
    lines = [f"| job | 1 process | {n} processes | scaling ({n} x samples/s over 1; ideal {n}) |", "| --- | --- | --- | --- |"]
    lines += [f"| {job} | {x:.2f} | {y:.2f} | {r:.2f} |" for job, x, y, r in rows]
    table = "\n".join(lines)
    print(table)
    print(f"(load average {load:.1f} on {os.cpu_count()} CPUs)")
    if a.write:
        text = (f"\n## Scaling under accelerate (tiny profile, CPU)\n\n`python -m bench.scaling --processes {n} "
                f"--images {a.images} --steps {a.steps} --write` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
                f"load average {load:.1f} while it ran):\n\n{table}\n")
        with open(ROOT / "bench" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

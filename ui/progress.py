"""One progress bar per run: the whole run's fraction, the stage in words, and the time left.

Methods report each stage on its own (`StepInfo(stage, i, n)`: 1..n, then the next stage starts
again from 1), which on screen looked like a bar restarting four times with labels such as
"inversion inversion_l_pair=32.4". `RunProgress` turns that into one bar over the whole run:

- `plan(method, inputs)` lists the stages the run will go through, each with its expected step
  count and a relative cost per step (UNet evaluations per step: a guided pix2pix-zero edit step
  is a forward, a backward and a forward; ITO's mask step runs 2n samples at once...). A stage that
  reports a different n replaces the estimate; a stage the plan did not foresee is added; a stage
  that never comes (a cached inversion) is dropped when a later one starts.
- the fraction is the cost done over the cost planned; the time left is extrapolated from the
  time spent so far, shown once the run is past its first steps;
- the stage is named in words ("Inverting the photo (12/50)"), losses are not part of it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

# Stage name as the engine reports it -> what a person reads.
WORDS = {
    "denoise": "Denoising",
    "inversion": "Inverting the photo (DDIM)",
    "reconstruction": "Reconstructing (reference attention maps)",
    "edit": "Editing",
    "mask": "Estimating the edit mask",
    "guidance": "Making the guidance image",
    "guidance inversion": "Inverting the guidance image",
    "reference (text-to-image)": "Generating the background reference",
    "embedding optimisation": "Optimising the text embeddings",
    "fine-tuning": "Fine-tuning (LoRA)",
    "sampling": "Sampling with iterative guidance",
    "reading the photo's scribble, pose and caption": "Reading the photo's scribble and pose",
    "captioning": "Captioning the photo",
}


def words(stage: str) -> str:
    return WORDS.get(stage, stage[:1].upper() + stage[1:])


def _ratio_steps(steps, ratio) -> int:
    try:
        return max(1, round(int(steps) * float(ratio)))
    except (TypeError, ValueError):
        return 1


def plan(method: str, inputs) -> list[tuple[str, int, float]]:
    """(stage, expected steps, cost per step) in run order; [] when the method is not known."""
    g = lambda name, default=None: getattr(inputs, name, default)  # noqa: E731
    steps = g("steps", 50)
    if method == "sdedit":
        return [("denoise", _ratio_steps(steps, g("strength", 0.7)), float(g("num_results", 1) or 1))]
    if method == "iedit":
        return [("denoise", _ratio_steps(steps, g("strength", 0.7)), float(g("num_results", 4) or 4))]
    if method == "iir-net":
        return [("denoise", max(1, int(steps) // 2), 1.0)]
    if method == "pix2pix-zero":
        return [("inversion", int(steps), 1.0), ("reconstruction", int(steps), 1.0), ("edit", int(steps), 4.0)]
    if method == "ito":
        n_enc = _ratio_steps(steps, g("encode_ratio", 1.0))
        out = [("inversion", n_enc, 1.0)]
        if g("mask") is None or g("mask_mode") == "add":
            out.append(("mask", _ratio_steps(steps, g("mask_encode_ratio", 0.5)), 2.0 * int(g("mask_seeds", 10))))
        if float(g("lam", 0.6)) < 1.0:
            out += [("guidance", n_enc, 1.0), ("guidance inversion", n_enc, 1.0)]
        return out + [("edit", n_enc, 1.0)]
    if method == "layer-diffusion":
        results = float(g("num_results", 1) or 1)
        out = []
        if g("reference") is None and not g("keep_background"):
            out.append(("reference (text-to-image)", int(steps), 2.0))
        return out + [("embedding optimisation", int(g("embed_steps", 500)), 3.0),
                      ("fine-tuning", int(g("tune_steps", 250)), 3.0), ("sampling", int(steps), 2.0 * results)]
    return []


@dataclass
class _Stage:
    name: str
    n: int
    cost: float
    done: int = 0


def work(method: str, inputs) -> float:
    """The planned cost of a run (steps x cost per step, scaled by the pixels), 0 when unknown."""
    try:
        side = float(getattr(inputs, "resolution", 512) or 512)
    except (TypeError, ValueError):
        side = 512.0
    return sum(n * cost for _, n, cost in plan(method, inputs)) * (side / 512.0) ** 2


class Timings:
    """Seconds per unit of planned work, per method, learned from this app's finished runs: the
    estimate of a run's time before it starts (the progress bar then extrapolates as it goes)."""

    def __init__(self):
        self._per_unit: dict[str, float] = {}

    def record(self, method: str, inputs, seconds: float) -> None:
        units = work(method, inputs)
        if units > 0 and seconds > 0:
            self._per_unit[method] = seconds / units

    def estimate(self, method: str, inputs) -> Optional[float]:
        per_unit = self._per_unit.get(method)
        return None if per_unit is None else per_unit * work(method, inputs)


class RunProgress:
    """Feed it every StepInfo; it answers (fraction of the run, description) for the bar.
    `expected`: the run's estimated seconds, used for the time left until the run's own pace is known."""

    def __init__(self, method: str, inputs, clock=time.monotonic, expected: Optional[float] = None):
        self.stages = [_Stage(name, max(1, n), cost) for name, n, cost in plan(method, inputs)]
        self.clock = clock
        self.start = clock()
        self.expected = expected

    def _find(self, name: str) -> int:
        for k, s in enumerate(self.stages):
            if s.name == name:
                return k
        self.stages.append(_Stage(name, 1, 1.0))  # unforeseen: counted from its own n
        return len(self.stages) - 1

    def update(self, stage: str, i: int, n: int) -> tuple[float, str]:
        k = self._find(stage)
        current = self.stages[k]
        if n and n > 0:
            current.n = int(n)
        current.done = max(0, min(int(i), current.n))
        for before in self.stages[:k]:  # finished, or skipped (a cached inversion)
            if before.done == 0:
                before.n = 0
            before.done = before.n
        total = sum(s.n * s.cost for s in self.stages) or 1.0
        fraction = min(1.0, sum(s.done * s.cost for s in self.stages) / total)
        position = [s for s in self.stages if s.n > 0]
        number = next((j + 1 for j, s in enumerate(position) if s is current), len(position))
        desc = f"Stage {number} of {len(position)}: {words(stage)} ({current.done}/{current.n})"
        left = self.seconds_left(fraction)
        if left is not None:
            desc += f" · about {duration(left)} left"
        return fraction, desc

    def seconds_left(self, fraction: float) -> Optional[float]:
        spent = self.clock() - self.start
        if fraction < 0.02 or spent < 1.0:  # too early to extrapolate honestly: the estimate, if any
            return None if self.expected is None else max(0.0, self.expected - spent)
        return spent * (1.0 - fraction) / fraction


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, s = divmod(seconds, 60)
    return f"{minutes} min {s:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"

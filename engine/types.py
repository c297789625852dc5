"""The types every method shares: what a run returns and how it reports progress."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from PIL import Image


@dataclass
class StepInfo:
    """One step of one stage, sent to the progress callback.

    `stage` names the part of the method ("inversion", "edit", "fine-tuning"...), `i` counts
    from 1 to `n`. `losses` carries the values a method optimises at that step, if any, as floats
    or 0-d tensors still on the device (the loop does not wait for them; reading one, float(v) or
    f"{v:.4g}", waits for the device at that point).
    """

    stage: str
    i: int
    n: int
    preview: Optional[Image.Image] = None
    losses: Optional[dict] = None


StepCallback = Callable[[StepInfo], None]


class Cancelled(Exception):
    """Raised by a progress callback to stop a run; methods clean up in `finally` blocks."""


@dataclass
class EditResult:
    """What every method returns, whatever branch it took.

    images:        the edited image(s), at least one.
    intermediates: named images worth showing (masks, reconstruction, guidance image...).
    seed:          the seed the run used.
    seconds:       wall-clock seconds per stage, plus "total".
    unet_evals:    {"forward": n, "backward": n}: UNet (and ControlNet-paired) evaluations.
    params:        the effective parameters (after defaults and validation), for reports.
    curves:        named loss curves (one value per step), for plots.
    notes:         short human-readable remarks (fallback used, mask empty...).
    """

    images: list[Image.Image]
    intermediates: dict[str, Image.Image] = field(default_factory=dict)
    seed: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    unet_evals: dict[str, int] = field(default_factory=lambda: {"forward": 0, "backward": 0})
    params: dict = field(default_factory=dict)
    curves: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def image(self) -> Image.Image:
        return self.images[0]

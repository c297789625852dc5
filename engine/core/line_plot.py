"""Small line plots drawn with PIL (no matplotlib): loss curves as a PNG intermediate.

`plot_panels([(title, {name: values})...])` stacks one panel per entry; each curve is drawn
faintly as recorded and boldly as a moving average, so a falling trend is visible through
the noise of randomly drawn timesteps.
"""
from __future__ import annotations

import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

COLORS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75))


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean over `window` values (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
           curves: dict[str, Sequence[float]], font) -> None:
    x0, y0, x1, y1 = box
    draw.text((x0 + 4, y0 + 2), title, fill=(0, 0, 0), font=font)
    left, top, right, bottom = x0 + 52, y0 + 18, x1 - 8, y1 - 18
    draw.rectangle((left, top, right, bottom), outline=(120, 120, 120))
    series = {k: [float(v) for v in vals if math.isfinite(float(v))] for k, vals in curves.items() if vals}
    series = {k: v for k, v in series.items() if v}
    if not series:
        draw.text((left + 8, top + 8), "no values", fill=(90, 90, 90), font=font)
        return
    lo = min(min(v) for v in series.values())
    hi = max(max(v) for v in series.values())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    n = max(len(v) for v in series.values())
    draw.text((x0 + 2, top - 2), _fmt(hi), fill=(60, 60, 60), font=font)
    draw.text((x0 + 2, bottom - 10), _fmt(lo), fill=(60, 60, 60), font=font)
    draw.text((left, bottom + 3), "1", fill=(60, 60, 60), font=font)
    draw.text((right - 6 * len(str(n)), bottom + 3), str(n), fill=(60, 60, 60), font=font)

    def point(i: int, v: float) -> tuple[float, float]:
        x = left + (right - left) * (i / max(1, n - 1))
        y = bottom - (bottom - top) * ((v - lo) / (hi - lo))
        return x, y

    window = max(1, n // 10)
    legend_x = left + 6
    for k, (name, values) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        faint = tuple(int(c + (255 - c) * 0.65) for c in color)
        if len(values) > 1:
            draw.line([point(i, v) for i, v in enumerate(values)], fill=faint, width=1)
            draw.line([point(i, v) for i, v in enumerate(moving_average(values, window))], fill=color, width=2)
        else:
            px, py = point(0, values[0])
            draw.ellipse((px - 2, py - 2, px + 2, py + 2), fill=color)
        label = f"{name} ({_fmt(values[0])} -> {_fmt(values[-1])})"
        draw.line((legend_x, top + 10, legend_x + 14, top + 10), fill=color, width=2)
        draw.text((legend_x + 18, top + 4), label, fill=color, font=font)
        legend_x += 26 + int(draw.textlength(label, font=font))


def plot_panels(panels: Sequence[tuple[str, dict[str, Sequence[float]]]], width: int = 640,
                panel_height: int = 200) -> Image.Image:
    """A white RGB image with one line-plot panel per (title, curves) entry."""
    panels = list(panels) or [("no curves", {})]
    image = Image.new("RGB", (width, panel_height * len(panels)), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for i, (title, curves) in enumerate(panels):
        _panel(draw, (0, i * panel_height, width, (i + 1) * panel_height), title, curves, font)
    return image

"""results.json, report.md and the image grid of an evaluation run (bench.evaluate)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence

from PIL import Image, ImageDraw

from bench.tasks import METRICS

GRID_CELL = 256


def fmt(metric: str, value) -> str:
    """A number as the papers print that metric ('—' for none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    digits = {"clip_acc": 1, "clipscore": 2, "ssim_m": 2, "ssim_mbar": 2, "class_acc_new": 1, "class_acc_orig": 1,
              "clip_score": 2, "pickscore": 2, "pick_preference": 2, "clip_cos": 3, "l1": 3}.get(metric, 3)
    return f"{value:.{digits}f}"


def mean(values: Sequence[float]) -> Optional[float]:
    good = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return sum(good) / len(good) if good else None


def summarize(cases: list[dict], metrics: list[str], side: str) -> dict:
    return {m: mean([c[side].get(m) for c in cases if c.get(side)]) for m in metrics}


def _clean(value):
    """NaN -> None (JSON has no NaN), recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_results(out: Path, results: dict) -> Path:
    path = Path(out) / "results.json"
    path.write_text(json.dumps(_clean(results), indent=2, default=str, allow_nan=False) + "\n")
    return path


def grid(rows: list[list[Image.Image]], labels: Sequence[str], cell: int = GRID_CELL) -> Image.Image:
    """Rows of images side by side, each scaled to `cell` px high, under a header of column labels."""
    header = 18
    scaled = [[im.resize((max(1, round(im.width * cell / im.height)), cell), Image.Resampling.LANCZOS)
               for im in row] for row in rows]
    widths = [max(row[j].width for row in scaled) for j in range(len(labels))]
    canvas = Image.new("RGB", (sum(widths) + 4 * (len(widths) - 1), header + len(rows) * (cell + 4)), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for j, label in enumerate(labels):
        draw.text((x + 4, 3), label, fill="black")
        for i, row in enumerate(scaled):
            canvas.paste(row[j], (x, header + i * (cell + 4)))
        x += widths[j] + 4
    return canvas


def _paper_cells(row, metrics) -> list[str]:
    return [fmt(m, row.values.get(m)) if row else "—" for m in metrics]


def write_report(out: Path, results: dict, paper_rows: list, command: str) -> Path:
    """report.md: our means beside the papers' rows, the paper's whole table, each photo, the grid."""
    metrics = results["metrics"]
    method, baseline = results["method"], results["baseline"]
    lines = [f"# {method} on {results['task']}", "",
             f"`{command}`", "",
             f"{results.get('scored', results['count'])} of {results['count']} photo(s) scored, from "
             f"`{results['images']}`, profile `{results['profile']}` on "
             f"{results['device']}, seeds {results['seed']}..{results['seed'] + max(0, results['count'] - 1)}, "
             f"baseline `{baseline}`. {results['task_about']}", ""]
    if results["profile"] != "sd15":
        lines += ["**Random weights (profile `%s`): these numbers only show that the pipeline runs; they say "
                  "nothing about the method and cannot be compared with the papers'.**" % results["profile"], ""]
    if not results.get("lpips_calibrated", True) and any(METRICS[m].needs == ("lpips",) for m in metrics):
        lines += ["LPIPS here is not the calibrated metric of the papers (no official linear weights were "
                  "found: `pip install lpips` or set DES_LPIPS_LINEAR), so LPIPS columns are not comparable.", ""]
    ours_row = next((r for r in paper_rows if (r.role == "method" and r.paper == method)
                     or (method == "sdedit" and r.role == "sdedit-swap")), None)
    base_row = next((r for r in paper_rows if r.role == baseline), None)
    head = ["Metric", f"ours: {method}", f"ours: {baseline}" if baseline != "none" else None,
            f"{ours_row.paper} paper: {ours_row.row}" if ours_row else "paper (method)",
            f"{base_row.paper} paper: {base_row.row}" if base_row else
            ("paper (baseline)" if baseline != "none" else None)]
    head = [h for h in head if h is not None]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ours, base = results["summary"]["ours"], results["summary"].get("baseline", {})
    for m in metrics:
        info = METRICS[m]
        arrow = {"higher": " ↑", "lower": " ↓"}.get(info.better, "")
        cells = [info.label + arrow, fmt(m, ours.get(m))]
        if baseline != "none":
            cells.append(fmt(m, base.get(m)))
        cells.append(fmt(m, ours_row.values.get(m)) if ours_row else "—")
        if baseline != "none":
            cells.append(fmt(m, base_row.values.get(m)) if base_row else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if paper_rows:
        lines += [f"## The paper's table ({paper_rows[0].table})", "",
                  "| Row | " + " | ".join(METRICS[m].label for m in metrics) + " |",
                  "|" + "---|" * (len(metrics) + 1)]
        lines += ["| " + " | ".join([r.row] + _paper_cells(r, metrics)) + " |" for r in paper_rows]
        lines.append("")
    lines += ["## Each photo", "", "| Photo | Mask | " + " | ".join(
        f"{METRICS[m].label} ({side})" for m in metrics for side in (["ours"] + ([baseline] if baseline != "none"
                                                                           else []))) + " |"]
    lines.append("|" + "---|" * (2 + len(metrics) * (2 if baseline != "none" else 1)))
    for c in results["cases"]:
        if "error" in c:
            lines.append(f"| {c['name']} | not scored: {c['error']} |" + " |" * (len(metrics) * (2 if baseline != "none"
                                                                                      else 1)))
            continue
        cells = [c["name"], c.get("mask") or "—"]
        for m in metrics:
            cells.append(fmt(m, c["ours"].get(m)))
            if baseline != "none":
                cells.append(fmt(m, (c.get("baseline") or {}).get(m)))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    if results.get("method_notes"):
        lines += [f"## What {method} said about its runs", ""] + [f"- {n}" for n in results["method_notes"][:20]]
        lines.append("")
    lines += ["## Images", "", f"input | ours ({method})" + (f" | {baseline}" if baseline != "none" else ""), "",
              "![input | ours | baseline](grid.png)", ""]
    path = Path(out) / "report.md"
    path.write_text("\n".join(lines))
    return path

"""The papers' own numbers, copied from their tables (papers in shared/papers/), in our metric units.

Each PaperRow names the paper, the table and the row it comes from. `role` says what the row is
in our evaluation: "method" (the paper's own method, compared with our implementation of it),
"sdedit-swap" / "ddim-swap" (the baselines bench.evaluate can run), or "other" (printed for
reference only). Units: percentages as the papers print them (CLIP-Acc 92.4 = 92.4 %), distances
as printed; `clip_cos` is LayerDiffusion's plain cosine (0.35).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PaperRow:
    paper: str                    # method name as the CLI knows it, e.g. "pix2pix-zero"
    table: str                    # where in the paper
    row: str                      # the row label as printed
    role: str                     # "method" | "sdedit-swap" | "ddim-swap" | "other"
    values: dict = field(default_factory=dict)


def _p2pz(task: str, label: str, rows: list[tuple[str, str, tuple]]) -> list[dict]:
    """pix2pix-zero Table 1: the first two tasks have CLIP-Acc, BG LPIPS, Structure Dist; the others
    CLIP-Acc and Structure Dist (no background error)."""
    out = []
    for row, role, values in rows:
        keys = ("clip_acc", "bg_lpips", "structure_dist") if len(values) == 3 else ("clip_acc", "structure_dist")
        out.append(PaperRow("pix2pix-zero", f"pix2pix-zero Table 1, {label}", row, role, dict(zip(keys, values))))
    return [dict(task=task, row=r) for r in out]


_ROWS = []
# pix2pix-zero (Parmar et al., SIGGRAPH 2023), Table 1: real LAION-5B images, SD 1.4, 100 steps.
_ROWS += _p2pz("cat-dog", "cat → dog", [
    ("SDEdit [35] + word swap", "sdedit-swap", (71.2, 0.327, 0.081)),
    ("DDIM + word swap", "ddim-swap", (72.0, 0.279, 0.087)),
    ("prompt-to-prompt [22]", "other", (66.0, 0.269, 0.080)),
    ("pix2pix-zero (ours)", "method", (92.4, 0.182, 0.044))])
_ROWS += _p2pz("horse-zebra", "horse → zebra", [
    ("SDEdit [35] + word swap", "sdedit-swap", (92.2, 0.314, 0.105)),
    ("DDIM + word swap", "ddim-swap", (94.0, 0.283, 0.123)),
    ("prompt-to-prompt [22]", "other", (18.4, 0.261, 0.095)),
    ("pix2pix-zero (ours)", "method", (75.2, 0.194, 0.066))])
_ROWS += _p2pz("cat-glasses", "cat → cat w/ glasses", [
    ("SDEdit [35] + word swap", "sdedit-swap", (34.0, 0.082)),
    ("DDIM + word swap", "ddim-swap", (37.6, 0.085)),
    ("prompt-to-prompt [22]", "other", (69.6, 0.081)),
    ("pix2pix-zero (ours)", "method", (71.2, 0.028))])
_ROWS += _p2pz("sketch-oil-pastel", "sketch → oil pastel", [
    ("SDEdit [35] + word swap", "sdedit-swap", (21.2, 0.085)),
    ("DDIM + word swap", "ddim-swap", (32.4, 0.082)),
    ("prompt-to-prompt [22]", "other", (10.8, 0.079)),
    ("pix2pix-zero (ours)", "method", (75.2, 0.052))])

# IIR-Net Table 1: LPIPS (input vs edit) and CLIP score (100 * cos, ViT-B/32 at 224 px), 150 images each.
for task, label, col in (("cub", "CUB", 0), ("outdoor-scenes", "Outdoor Scenes", 1), ("coco", "COCO", 2)):
    for row, role, values in (
            ("Imagic [9]", "other", ((0.406, 27.03), (0.551, 22.85), (0.567, 21.53))),
            ("Text2live [1]", "other", ((0.162, 30.37), (0.218, 22.64), (0.495, 25.11))),
            ("ControlNet [40]", "other", ((0.528, 29.49), (0.618, 23.89), (0.606, 23.57))),
            ("ours", "method", ((0.138, 29.57), (0.479, 25.45), (0.301, 24.30)))):
        lp, cs = values[col]
        _ROWS.append(dict(task=task, row=PaperRow("iir-net", f"IIR-Net Table 1, {label}", row, role,
                                                  {"lpips": lp, "clip_score": cs})))

# iEdit Table 1: CLIPScore (%), SSIM-M (%), SSIM-M-bar (%) (FID not reproduced: needs a reference set).
for task, label, rows in (
        ("iedit-generated", "(a) generated images", (
            ("SDEdit [26]", "sdedit-swap", (62.58, 82.44, 50.64)),
            ("DALL-E 2 [30]", "other", (65.44, 82.45, 94.76)),
            ("InstructPix2Pix [4]", "other", (65.12, 88.62, 76.43)),
            ("iEdit (ours)", "other", (65.76, 82.70, 52.02)),
            ("iEdit-M (ours)", "method", (66.36, 83.08, 78.18)))),
        ("iedit-real", "(b) real images", (
            ("SDEdit [26]", "sdedit-swap", (65.84, 74.36, 64.60)),
            ("DALL-E 2 [30]", "other", (65.46, 74.41, 93.97)),
            ("InstructPix2Pix [4]", "other", (66.91, 80.59, 79.92)),
            ("iEdit (ours)", "other", (67.02, 74.59, 70.09)),
            ("iEdit-M (ours)", "method", (67.44, 74.98, 80.44))))):
    for row, role, (cs, sm, smb) in rows:
        _ROWS.append(dict(task=task, row=PaperRow("iedit", f"iEdit Table 1 {label}", row, role,
                                                  {"clipscore": cs, "ssim_m": sm, "ssim_mbar": smb})))

# ITO Table 1 (ImageNet, DiffEdit's protocol): L1, classification accuracy as the new / original
# class (%), PickScore preference share among the three methods (CSFID not reproduced).
for row, role, values in (("DiffEdit", "other", (0.124, 37.8, 45.9, 0.31)),
                          ("Prompt-to-prompt", "other", (0.128, 34.2, 45.5, 0.27)),
                          ("Ours", "method", (0.136, 60.1, 20.0, 0.41))):
    _ROWS.append(dict(task="imagenet-class", row=PaperRow(
        "ito", "ITO Table 1, ImageNet", row, role,
        dict(zip(("l1", "class_acc_new", "class_acc_orig", "pick_preference"), values)))))

# LayerDiffusion Table 1: CLIP score (cosine) over 300 TEdBench images; (f) is the full method,
# the other rows ablate parts (a-e: losses; g: no layered controlled optimisation; h: no
# fine-tuning; i: no iterative guidance; j, k: alpha = 1, 0).
for row, role, value in (("(f) full method", "method", 0.35), ("(a) no L_obj", "other", 0.28),
                         ("(b) no L_bg", "other", 0.32), ("(c) lambda1 = 1", "other", 0.29),
                         ("(d) lambda1 = 3", "other", 0.32), ("(e) lambda1 = 1, lambda2 = 3", "other", 0.28),
                         ("(g) no layered controlled optimisation", "other", 0.33),
                         ("(h) no fine-tuning", "other", 0.32), ("(i) no iterative guidance", "other", 0.29),
                         ("(j) alpha = 1", "other", 0.32), ("(k) alpha = 0", "other", 0.29)):
    _ROWS.append(dict(task="tedbench", row=PaperRow("layer-diffusion", "LayerDiffusion Table 1", row, role,
                                                    {"clip_cos": value})))

PAPER_ROWS: dict[str, list[PaperRow]] = {}
for _item in _ROWS:
    PAPER_ROWS.setdefault(_item["task"], []).append(_item["row"])


def rows_for(task: str) -> list[PaperRow]:
    """Every row the papers print for `task` (empty for a task without a paper table)."""
    return list(PAPER_ROWS.get(task, []))


def row_for(task: str, role: str, paper: str | None = None) -> PaperRow | None:
    """The row of `task` with that role (and paper, if given), or None."""
    for row in PAPER_ROWS.get(task, []):
        if row.role == role and (paper is None or row.paper == paper):
            return row
    return None

"""pix2pix-zero's paired dataset for distillation (papers/pix2pix-zero.txt, Sec. 4.5 and Appendix A,
"Paired Dataset Collection"): edit every photo of a folder with our pix2pix-zero, keep the pair
(photo, edit) only when it passes the paper's two filters.

    python -m engine.train.p2pz_distill pairs --direction "cat -> dog" --images DIR --out DIR
        [--limit N] [--min-overlap 0.70] [--min-clip-gain 0.10] [--no-segmentation]
        [--segmenter grounded-sam|clipseg] [--mask-threshold 0.5] [--target-text "a photo of a dog"]
        [--captions FILE.json] [--steps 50] [--xa-guidance 0.1] [--cfg 5] [--resolution 512] [--seed 0]
        [--profile sd15|tiny] [--device cuda]
    accelerate launch --multi_gpu --num_processes N -m engine.train.p2pz_distill pairs ...  (the same flags)

The two filters, exactly (Appendix A: "we automatically filter out pairs with low segmentation
overlap or do not sufficiently increase the CLIP similarity with the target description"):
- segmentation overlap = IoU(B(M_source(input)), B(M_target(edit))) = |A n B| / |A u B|: the mask of
  the source word (e.g. "cat") on the input photo and the mask of the target word ("dog") on the
  edit, both binarised (Grounded-SAM's masks as they come; CLIPSeg's at --mask-threshold), at the
  same size. Two empty masks give 0 (nothing to compare: the object was not found). The pair
  passes when overlap >= --min-overlap (the paper: 0.70 for cat -> dog).
- CLIP similarity increase = cos(E_img(edit), E_txt(T)) - cos(E_img(input), E_txt(T)), with T the
  target description (--target-text, default "a photo of a <target>"), E_* CLIP's normalised
  embeddings (engine/core/clip.py). The pair passes when the increase >= --min-clip-gain (the
  paper: 0.10).
The paper drops the segmentation filter for trees ("the off-the-shelf segmentation model does not
reliably segment trees"): --min-overlap 0 keeps every overlap, --no-segmentation also skips the
masks (no overlap is computed).

A sharded, resumable job (engine/train/shards.py, as engine/train/iedit_pairs.py): one item per
photo under OUT/items/ (its caption, the scores and the two PNGs OUT/images/NAME_input.png,
NAME_edit.png, dropped ones included so that they can be looked at), finished items skipped on a
rerun with the same pix2pix-zero settings. The thresholds are not part of an item: the filter is
applied when the items are merged, so a rerun with other thresholds only re-filters. The main
process writes OUT/pairs.json (the pairs manifest that training reads: direction, target
description, thresholds, the kept pairs and every dropped one with its reason) and prints every
dropped pair with its reason. Photos that cannot be read or edited are dropped with the error.

Guarding tests (tests/test_p2pz_distill_train.py; breakages in tests/mutants/m_p2pz_distill.py):
- overlap is the IoU of the source mask on the input and the target mask on the edit, the gain
  is the edit's similarity minus the input's: test_filter_scores_are_iou_and_clip_gain;
- a pair below either threshold is dropped and listed with its reason, >= passes:
  test_filter_decision_uses_both_thresholds, test_pairs_job_drops_keeps_and_resumes;
- kept pairs' files exist, a rerun re-filters without re-editing and redoes only unfinished items:
  test_pairs_job_drops_keeps_and_resumes;
- bad input -> exit code 2 and one line: test_pairs_cli_bad_input.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image
from engine.train.shards import read_captions

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PAIRS = "pairs.json"
PAIRS_FORMAT = "des-p2pz-pairs"
SEGMENTERS = ("grounded-sam", "clipseg")
MIN_OVERLAP, MIN_CLIP_GAIN = 0.70, 0.10  # Appendix A, cat -> dog


def parse_direction(text: str) -> tuple[str, str]:
    """'cat -> dog' -> ('cat', 'dog'); anything else is a ValueError."""
    parts = str(text or "").split("->")
    if len(parts) != 2 or not all(" ".join(p.split()) for p in parts):
        raise ValueError(f'the direction must read "source -> target" (e.g. "cat -> dog"), got {text!r}')
    source, target = (" ".join(p.split()) for p in parts)
    if source.lower() == target.lower():
        raise ValueError(f"the direction's source and target are the same word ({source!r})")
    return source, target


def list_images(folder) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"no image folder at {folder}")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
    if not found:
        raise ValueError(f"{folder} holds no images ({', '.join(EXTENSIONS)})")
    return found


def check_thresholds(min_overlap: float, min_clip_gain: float, mask_threshold: float = 0.5) -> None:
    if not 0.0 <= float(min_overlap) <= 1.0:
        raise ValueError(f"--min-overlap is an IoU, between 0 and 1; got {min_overlap}")
    if not -2.0 <= float(min_clip_gain) <= 2.0:
        raise ValueError(f"--min-clip-gain is a difference of cosines, between -2 and 2; got {min_clip_gain}")
    if not 0.0 < float(mask_threshold) < 1.0:
        raise ValueError(f"--mask-threshold must be between 0 and 1 (exclusive); got {mask_threshold}")


# -- the two filters (Appendix A) -----------------------------------------------------------------
def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """|A n B| / |A u B| of two boolean masks of one size; 0 when both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    if a.shape != b.shape:
        raise ValueError(f"masks of different sizes: {a.shape} and {b.shape}")
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def clip_gain(input_emb, edit_emb, text_emb) -> tuple[float, float, float]:
    """(gain, cos_input, cos_edit): gain = cos(E_img(edit), E_txt(T)) - cos(E_img(input), E_txt(T));
    embeddings L2-normalised, 1-D."""
    cos_input = float((input_emb * text_emb).sum())
    cos_edit = float((edit_emb * text_emb).sum())
    return cos_edit - cos_input, cos_input, cos_edit


def segment_mask(models, segmenter: str, image: Image.Image, phrase: str, mask_threshold: float) -> np.ndarray:
    """The boolean mask of `phrase` in `image` (the photo's size) from Grounded-SAM or CLIPSeg."""
    from engine.core.segment import clipseg_mask, grounded_sam

    if segmenter == "clipseg":
        return clipseg_mask(models.get("clipseg"), image, phrase) >= mask_threshold
    return grounded_sam(models.get("grounding_dino"), models.get("sam"), image, phrase).mask > 0.5


def score_pair(models, photo: Image.Image, edited: Image.Image, source: str, target: str, target_text: str,
               segmenter: Optional[str], mask_threshold: float = 0.5) -> dict:
    """The scores of one pair: overlap (None without a segmenter) and the CLIP increase."""
    from engine.core.clip import image_embeddings, text_embeddings

    if edited.size != photo.size:
        edited = edited.resize(photo.size, Image.LANCZOS)
    scores: dict = {"overlap": None}
    if segmenter is not None:
        m_in = segment_mask(models, segmenter, photo, source, mask_threshold)    # source object on the input
        m_out = segment_mask(models, segmenter, edited, target, mask_threshold)  # target object on the edit
        scores.update(overlap=round(mask_iou(m_in, m_out), 6), source_area=round(float(m_in.mean()), 6),
                      target_area=round(float(m_out.mean()), 6))
    clip = models.get("clip")
    img = image_embeddings(clip, [photo, edited])
    txt = text_embeddings(clip, [target_text])[0]
    gain, cos_in, cos_out = clip_gain(img[0], img[1], txt)
    scores.update(clip_gain=round(gain, 6), clip_input=round(cos_in, 6), clip_edit=round(cos_out, 6))
    return scores


def drop_reason(record: dict, min_overlap: float, min_clip_gain: float, source: str = "source",
                target: str = "target", target_text: str = "the target") -> Optional[str]:
    """None when the pair passes both filters (Appendix A), else why it is dropped."""
    if record.get("error"):
        return record["error"]
    reasons = []
    overlap = record.get("overlap")
    if min_overlap > 0 and overlap is None:
        reasons.append("no segmentation overlap was computed (the items were made with --no-segmentation)")
    elif min_overlap > 0 and overlap < min_overlap:  # segmentation overlap filter (0.70 for cat -> dog)
        reasons.append(f"segmentation overlap {overlap:.3f} < {min_overlap:.2f} (IoU of the '{source}' mask "
                       f"on the input and the '{target}' mask on the edit)")
    if record["clip_gain"] < min_clip_gain:  # CLIP increase filter (0.10)
        reasons.append(f"CLIP gain {record['clip_gain']:.3f} < {min_clip_gain:.2f} (similarity to "
                       f"'{target_text}': input {record['clip_input']:.3f}, edit {record['clip_edit']:.3f})")
    return "; ".join(reasons) or None


# -- the job -----------------------------------------------------------------------------------------
def _edit_one(path: Path, key: str, a, source: str, target: str, target_text: str, captions: dict, models,
              out: Path) -> tuple[dict, list[str]]:
    """pix2pix-zero on one photo, the two PNGs and the pair's scores."""
    from engine.core.image import load_image
    from engine.methods.pix2pix_zero import Pix2PixZeroInputs, auto_caption, run
    from engine.train.shards import save_image

    try:
        photo = load_image(path, a.resolution)
        caption = captions.get(path.name) or auto_caption(models, path, max(a.resolution, 512))
        result = run(Pix2PixZeroInputs(image=path, source=source, target=target, caption=caption, steps=a.steps,
                                       xa_guidance=a.xa_guidance, cfg=a.cfg, seed=a.seed, resolution=a.resolution),
                     models)
    except ValueError as exc:
        return {"error": f"pix2pix-zero could not edit {path.name}: {exc}"}, []
    edited = result.images[0]
    if edited.size != photo.size:
        edited = edited.resize(photo.size, Image.LANCZOS)
    stem = key.replace(".", "_")
    files = [f"images/{stem}_input.png", f"images/{stem}_edit.png"]
    save_image(photo, out / files[0])
    save_image(edited, out / files[1])
    scores = score_pair(models, photo, edited, source, target, target_text,
                        None if a.no_segmentation else a.segmenter, a.mask_threshold)
    return dict(scores, image=str(path), caption=caption, input=files[0], edit=files[1],
                ), files


def build_pairs(a, models, progress: bool = True) -> dict:
    """Run the job for the parsed arguments `a`; returns the pairs manifest (every process)."""
    from tqdm.auto import tqdm

    from engine.train.shards import ShardedJob, write_atomic

    source, target = parse_direction(a.direction)
    check_thresholds(a.min_overlap, a.min_clip_gain, a.mask_threshold)
    if a.limit is not None and a.limit < 1:
        raise ValueError(f"--limit must be at least 1, got {a.limit}")
    target_text = " ".join((a.target_text or f"a photo of a {target}").split())
    captions = read_captions(a.captions)
    paths = list_images(a.images)[:a.limit]
    out = Path(a.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    segmenter = None if a.no_segmentation else a.segmenter
    settings = {"images": str(Path(a.images).resolve()), "direction": [source, target], "target_text": target_text,
                "captions": captions, "steps": a.steps, "xa_guidance": a.xa_guidance, "cfg": a.cfg, "seed": a.seed,
                "resolution": a.resolution, "segmenter": segmenter, "mask_threshold": a.mask_threshold,
                "profile": getattr(models, "profile", None)}
    job = ShardedJob(out, signature=settings)
    keys = [p.name for p in paths]
    by_key = dict(zip(keys, paths))
    for key in tqdm(job.mine(keys), desc="pix2pix-zero pairs", disable=not progress or not job.is_main,
                    file=sys.stderr):
        record, files = _edit_one(by_key[key], key, a, source, target, target_text, captions, models, out)
        job.finish(key, record, files)
    items = job.merge(keys)
    kept, dropped = [], []
    for it in items:  # the filters, applied at the merge with this run's thresholds
        rec = it["record"]
        reason = drop_reason(rec, a.min_overlap, a.min_clip_gain, source, target, target_text)
        row = {"key": it["key"], **{k: rec.get(k) for k in ("input", "edit", "caption", "overlap", "clip_gain",
                                                            "clip_input", "clip_edit")}}
        (kept if reason is None else dropped).append(row if reason is None else dict(row, reason=reason))
    manifest = {"format": PAIRS_FORMAT, "version": 1, "direction": {"source": source, "target": target},
                "target_text": target_text,
                "filters": {"min_overlap": a.min_overlap, "min_clip_gain": a.min_clip_gain, "segmenter": segmenter,
                            "mask_threshold": a.mask_threshold},
                "pix2pix_zero": {k: settings[k] for k in ("steps", "xa_guidance", "cfg", "seed", "resolution")},
                "profile": settings["profile"], "pairs": kept, "dropped": dropped,
                "skipped_finished": len(job.skipped)}
    if job.is_main:
        write_atomic(out / PAIRS, json.dumps(manifest, indent=1, ensure_ascii=False).encode())
    job.barrier()
    manifest["resumed"] = list(job.skipped)
    return manifest


def add_pairs_arguments(p) -> None:
    from engine.models import PROFILES

    p.add_argument("--direction", required=True, help='the edit, "source -> target", e.g. "cat -> dog"')
    p.add_argument("--images", required=True, help="folder of photos (png, jpg, webp, bmp)")
    p.add_argument("--out", required=True, help="pairs folder to write (pairs.json, images/, items/)")
    p.add_argument("--limit", type=int, default=None, help="only the first N photos (by file name)")
    p.add_argument("--min-overlap", type=float, default=MIN_OVERLAP,
                   help="segmentation IoU a pair needs (Appendix A: 0.70; 0 turns the filter off, as for trees)")
    p.add_argument("--min-clip-gain", type=float, default=MIN_CLIP_GAIN,
                   help="increase of the CLIP similarity to the target description a pair needs (Appendix A: 0.10)")
    p.add_argument("--no-segmentation", action="store_true",
                   help="no masks at all (the paper's tree tasks); implies --min-overlap 0")
    p.add_argument("--segmenter", choices=SEGMENTERS, default="grounded-sam", help="the masks of the overlap filter")
    p.add_argument("--mask-threshold", type=float, default=0.5, help="CLIPSeg's mask threshold")
    p.add_argument("--target-text", default=None, help='the target description (default "a photo of a <target>")')
    p.add_argument("--captions", help='JSON {"file.png": "caption"} used instead of BLIP for those photos')
    p.add_argument("--steps", type=int, default=50, help="pix2pix-zero's DDIM steps (the paper: 100)")
    p.add_argument("--xa-guidance", type=float, default=0.1, help="pix2pix-zero's lambda_xa")
    p.add_argument("--cfg", type=float, default=5.0, help="pix2pix-zero's classifier-free guidance scale")
    p.add_argument("--resolution", type=int, default=512, help="longest side of the photos and edits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", choices=PROFILES, default="sd15")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_pairs(a, models=None) -> int:
    """The `pairs` subcommand; ValueError for bad input (main turns it into exit code 2)."""
    import os

    from engine.models import ModelCache

    if a.no_segmentation:
        a.min_overlap = 0.0
    parse_direction(a.direction)
    check_thresholds(a.min_overlap, a.min_clip_gain, a.mask_threshold)
    list_images(a.images)
    if models is None:
        device = a.device
        if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from engine.train.accel import process_state

            device = str(process_state().device)
        models = ModelCache(a.profile, device=device)
    manifest = build_pairs(a, models, progress=not a.quiet)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    for row in manifest["dropped"]:
        print(f"dropped {row['key']}: {row['reason']}", file=sys.stderr)
    print(f"kept {len(manifest['pairs'])} of {len(manifest['pairs']) + len(manifest['dropped'])} pairs "
          f"({len(manifest['resumed'])} finished before); wrote {Path(a.out) / PAIRS}", file=sys.stderr)
    return 0

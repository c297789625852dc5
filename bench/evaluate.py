"""Evaluate a method the way its paper does, with the paper's own numbers beside ours.

    python -m bench.evaluate --method pix2pix-zero --task cat-dog --images FOLDER --out DIR
        [--profile tiny] [--limit N] [--seed 0] [--baseline sdedit-swap|ddim-swap|none]
        [--resolution 512] [--masks DIR] [--set NAME=VALUE ...] [--baseline-set NAME=VALUE ...]

Runs the method over the photos of FOLDER (sorted, the first N), photo i with seed SEED + i, and
the baseline with the same seed; scores both with the task's metrics (bench/tasks.py, bench/metrics.py)
and writes DIR/results.json (every number, per photo and mean), DIR/report.md (the paper's table
with our row beside it) and DIR/grid.png (input | ours | baseline), the images under DIR/images/.
`--set` changes a setting of the method's Inputs (e.g. `--set steps=100` for pix2pix-zero's paper
setting), `--baseline-set` one of the baseline's. Tasks: `python -m bench.evaluate --list`.
Bad input: one line on stderr, exit code 2.

At scale, the same command under `accelerate launch --num_processes N -m bench.evaluate ...` splits
the photos over N processes (engine/train/shards.py): each photo is one item (DIR/items/NNN_name.json
beside its images), a photo already done is skipped, so a killed job continues where it stopped, and
the main process merges the items into DIR/manifest.jsonl, results.json, report.md and grid.png.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from bench import metrics as M
from bench.eval_report import grid, summarize, write_report, write_results
from bench.paper_numbers import rows_for
from bench.results import command_line
from bench.runners import BASELINES, baseline_inputs, build_inputs, method_module, parse_sets, run_baseline
from bench.tasks import METRICS, TASKS, Case, Task, get_task, load_cases
from engine.train.shards import ShardedJob, save_image

CLIPSEG_THRESHOLD = 0.5


class Scorer:
    """Loads the metric networks a task needs once, and scores an edited photo against its input."""

    def __init__(self, models, metrics: list[str]):
        self.models = models
        self.metrics = metrics
        self.nets: dict = {}
        self.unavailable: dict[str, str] = {}
        self.notes: list[str] = []
        for name in sorted({c for m in metrics for c in METRICS[m].needs}):
            try:
                self.nets[name] = models.get(name)
            except Exception as exc:  # no weights offline, a missing package...: report, keep going
                self.unavailable[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                self.notes.append(f"{name} could not be loaded ({self.unavailable[name]}); "
                                  f"its metrics are left empty")

    @property
    def lpips_calibrated(self) -> Optional[bool]:
        net = self.nets.get("lpips")
        return None if net is None else bool(net.calibrated)

    def mask(self, case: Case) -> Optional[np.ndarray]:
        """The case's object mask: from its file, else CLIPSeg's mask of the source word (> 0.5)."""
        if case.mask is None:
            from engine.core.segment import clipseg_mask

            soft = clipseg_mask(self.models.get("clipseg"), case.image, case.source)
            case.mask = (soft > CLIPSEG_THRESHOLD).astype(np.float32)
            case.mask_origin = "clipseg"
            if not case.mask.any():
                self.notes.append(f"{case.name}: CLIPSeg found no '{case.source}'; the mask is empty")
        return case.mask

    def score(self, case: Case, edited: Image.Image) -> dict[str, float]:
        if edited.size != case.image.size:
            edited = edited.resize(case.image.size, Image.Resampling.BICUBIC)
        out: dict[str, float] = {}
        cache: dict[str, object] = {}
        for m in self.metrics:
            if m == "pick_preference" or any(c in self.unavailable for c in METRICS[m].needs):
                continue
            out[m] = self._one(m, case, edited, cache)
        return out

    def _one(self, m: str, case: Case, edited: Image.Image, cache: dict) -> float:
        n, a = self.nets, case.image
        if m == "clip_acc":
            return 100.0 if M.clip_acc(n["clip"], [edited], case.source_prompt, case.target_prompt)[0] else 0.0
        if m == "bg_lpips":
            return M.bg_lpips(n["lpips"], a, edited, self.mask(case))
        if m == "lpips":
            return M.lpips(n["lpips"], a, edited)
        if m == "structure_dist":
            return M.structure_dist(n["dino"], a, edited)
        if m == "clip_score":
            return M.clip_score(n["clip"], [edited], case.target_prompt)[0]
        if m == "clip_cos":
            return M.clip_score(n["clip"], [edited], case.target_prompt)[0] / 100.0
        if m == "clipscore":
            return M.clipscore(n["clip"], [edited], case.target_prompt)[0]
        if m in ("ssim_m", "ssim_mbar"):
            if "ssim" not in cache:
                cache["ssim"] = M.ssim_inside_outside(a, edited, self.mask(case))
            inside, outside = cache["ssim"]
            return 100.0 * (inside if m == "ssim_m" else outside)
        if m == "l1":
            return M.l1(a, edited)
        if m in ("class_acc_new", "class_acc_orig"):
            if "class" not in cache:
                classes = list(dict.fromkeys([case.source, case.target, *case.classes]))
                cache["class"] = M.clip_classify(n["clip"], [edited], classes)[0]
            want = case.target if m == "class_acc_new" else case.source
            return 100.0 if cache["class"] == want else 0.0
        if m == "pickscore":
            return M.pickscore(n["pickscore"], [edited], case.target_prompt)[0]
        raise ValueError(f"unknown metric {m!r}")


def _save(image: Image.Image, folder: Path, name: str) -> str:
    save_image(image, folder / name)  # atomically: a killed job leaves no half-written PNG
    return f"images/{name}"


def _run_case(i: int, case: Case, entry: dict, module, baseline: str, models, scorer: Scorer, out: Path,
              resolution: int, method_settings, baseline_settings) -> list[Image.Image]:
    """Edit one photo with the method and the baseline and score both into `entry`; returns the grid row."""
    s = entry["seed"]
    t0 = time.perf_counter()
    ours = module.run(build_inputs(module, case, s, resolution, method_settings), models)
    entry["seconds_ours"] = round(time.perf_counter() - t0, 3)
    entry.update(stages_ours=ours.seconds, unet_evals_ours=ours.unet_evals, notes_ours=ours.notes,
                 images={"input": _save(case.image, out / "images", f"{i:03d}_{case.name}_input.png"),
                         "ours": _save(ours.image, out / "images", f"{i:03d}_{case.name}_ours.png")})
    row = [case.image, ours.image]
    base = None
    if baseline != "none":
        t0 = time.perf_counter()
        base = run_baseline(baseline, case, s, resolution, models, baseline_settings)
        entry["seconds_baseline"] = round(time.perf_counter() - t0, 3)
        entry["unet_evals_baseline"] = base.unet_evals
        entry["images"]["baseline"] = _save(base.image, out / "images", f"{i:03d}_{case.name}_baseline.png")
        row.append(base.image)
    entry["ours"] = scorer.score(case, ours.image)
    if base is not None:
        entry["baseline"] = scorer.score(case, base.image)
        if "pick_preference" in scorer.metrics and "pickscore" in scorer.nets:
            p_ours, p_base = M.preference([entry["ours"]["pickscore"], entry["baseline"]["pickscore"]])
            entry["ours"]["pick_preference"], entry["baseline"]["pick_preference"] = p_ours, p_base
    if case.mask is not None:
        from engine.core.masks import to_pil

        entry["mask"] = case.mask_origin
        entry["images"]["mask"] = _save(to_pil(case.mask), out / "images", f"{i:03d}_{case.name}_mask.png")
    return row


def evaluate(method: str, task: Task, images: Path, out: Path, models, limit: Optional[int] = None,
             seed: int = 0, baseline: str = "sdedit-swap", resolution: int = 512, masks: Optional[Path] = None,
             method_settings: Optional[dict] = None, baseline_settings: Optional[dict] = None,
             command: str = "") -> dict:
    """Run and score; write results.json, report.md and grid.png into `out`. Returns the results."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}")
    module = method_module(method)
    cases = load_cases(images, task, resolution, limit, masks)
    for i, case in enumerate(cases):  # a wrong --set fails here, before anything runs
        build_inputs(module, case, seed + i, resolution, method_settings)
        if baseline != "none":
            baseline_inputs(baseline, case, seed + i, resolution, baseline_settings)
    try:
        models.sd()
    except Exception as exc:  # offline without weights, a wrong path...: say so in one line
        raise ValueError(f"cannot load Stable Diffusion for the {models.profile!r} profile from "
                         f"{models.source('sd') if models.profile == 'sd15' else models.cache_dir} "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = list(task.metrics)
    if "pick_preference" in metrics and baseline == "none":
        metrics.remove("pick_preference")
    scorer = Scorer(models, metrics)
    results = dict(method=method, task=task.name, task_about=task.about, images=str(images), out=str(out),
                   profile=models.profile, device=str(models.device), real_weights=not models.is_fake,
                   seed=seed, baseline=baseline, resolution=resolution, count=len(cases), metrics=metrics,
                   settings={"method": dict(method_settings or {}), "baseline": dict(baseline_settings or {})},
                   models={k: v for k, v in models.describe().items()
                           if k in {"sd", "clipseg", *scorer.nets, *scorer.unavailable}},
                   lpips_calibrated=scorer.lpips_calibrated, command=command,
                   paper=[vars(r) for r in rows_for(task.name)], cases=[], notes=scorer.notes)
    # One item per photo, split over the processes (accelerate launch); finished photos are skipped.
    signature = {k: results[k] for k in ("method", "task", "images", "profile", "seed", "baseline", "resolution",
                                         "metrics", "settings", "models")}
    job = ShardedJob(out, signature=dict(signature, photos=[c.path.name for c in cases]))
    general_notes = len(scorer.notes)
    keys = [f"{i:03d}_{case.name}" for i, case in enumerate(cases)]
    todo = set(job.mine(keys))
    for i, case in enumerate(cases):
        if keys[i] not in todo:
            continue
        entry = dict(name=case.name, file=case.path.name, seed=seed + i, source=case.source, target=case.target,
                     source_prompt=case.source_prompt, target_prompt=case.target_prompt)
        noted = len(scorer.notes)
        try:
            _run_case(i, case, entry, module, baseline, models, scorer, out, resolution,
                      method_settings, baseline_settings)
        except ValueError as exc:  # this photo only (CLIPSeg found nothing, ...): say so, go on
            entry["error"] = str(exc)
            scorer.notes.append(f"{case.name}: not scored: {exc}")
            entry.pop("ours", None)
            entry.pop("baseline", None)
        entry["notes_scoring"] = scorer.notes[noted:]
        job.finish(keys[i], entry, entry.get("images", {}).values())
    items = job.merge(keys)  # waits for every process; manifest.jsonl in key order
    results["cases"] = [it["record"] for it in items]
    results["processes"] = job.world
    results["notes"] = list(dict.fromkeys(scorer.notes[:general_notes] + [
        n for c in results["cases"] for n in c.get("notes_scoring", [])]))
    done = [c for c in results["cases"] if "error" not in c]
    results["summary"] = {"ours": summarize(done, metrics, "ours")}
    if baseline != "none":
        results["summary"]["baseline"] = summarize(done, metrics, "baseline")
    results["scored"] = len(done)
    if not done:
        errors = [c["error"] for c in results["cases"] if "error" in c]
        raise ValueError(f"no photo could be edited; the first error: {errors[0] if errors else 'none ran'}")
    if not job.is_main:
        return results
    rows = []
    for c in done:
        names = ["input", "ours"] + (["baseline"] if baseline != "none" else [])
        rows.append([Image.open(out / c["images"][k]).convert("RGB") for k in names])
    # what the method said about its runs (a fallback it took, a cached inversion...), once each
    results["method_notes"] = list(dict.fromkeys(n for c in results["cases"] for n in c.get("notes_ours", [])))
    write_results(out, results)
    labels = ["input", f"ours ({method})"] + ([baseline] if baseline != "none" else [])
    grid(rows, labels).save(out / "grid.png")
    write_report(out, results, rows_for(task.name), command)
    return results


# -- command line -----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from engine.__main__ import _model_override
    from engine.models import MEMORY_MODES, PROFILES

    p = argparse.ArgumentParser(prog="python -m bench.evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="list the tasks and exit")
    p.add_argument("--method", help="a method of engine/methods (pix2pix-zero, ito, iir-net, iedit, ...)")
    p.add_argument("--task", help=f"one of {', '.join(TASKS)}")
    p.add_argument("--images", help="folder of photos (optional prompts.json and masks/ inside)")
    p.add_argument("--out", help="folder for results.json, report.md, grid.png and images/")
    p.add_argument("--profile", choices=PROFILES, default="sd15")
    p.add_argument("--device", default=None)
    p.add_argument("--memory", choices=MEMORY_MODES, default="gpu")
    p.add_argument("--model", action="append", type=_model_override, default=[], metavar="NAME=SRC",
                   help="override a component's hub id or local path, e.g. lpips=alexnet-owt-7be5be79.pth")
    p.add_argument("--limit", type=int, default=None, help="only the first N photos")
    p.add_argument("--seed", type=int, default=0, help="photo i runs with seed SEED + i")
    p.add_argument("--baseline", choices=BASELINES, default="sdedit-swap")
    p.add_argument("--resolution", type=int, default=512, help="longest side in pixels (multiple of 8)")
    p.add_argument("--masks", default=None, help="folder of object masks named like the photos "
                                                 "(default FOLDER/masks; else CLIPSeg of the source word)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting of the method's Inputs (repeatable), e.g. steps=100")
    p.add_argument("--baseline-set", dest="baseline_sets", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting of the baseline (repeatable), e.g. strength=0.5")
    return p


def list_tasks() -> str:
    lines = []
    for t in TASKS.values():
        lines.append(f"{t.name:18} {t.paper:16} {t.source} -> {t.target}   metrics: {', '.join(t.metrics)}")
        lines.append(f"{'':18} {t.about}")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.list:
        print(list_tasks())
        return 0
    missing = [f"--{k}" for k in ("method", "task", "images", "out") if not getattr(args, k)]
    if missing:
        print(f"error: {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required", file=sys.stderr)
        return 2
    from engine.models import ModelCache
    from engine.train.shards import process_group

    rank, world, _ = process_group()  # under accelerate launch: this process's share of the photos
    device = args.device
    if device is None and world > 1:
        from engine.train.accel import process_state

        device = str(process_state().device)
    try:
        task = get_task(args.task)
        models = ModelCache(args.profile, device=device, memory=args.memory, overrides=dict(args.model))
        results = evaluate(args.method, task, Path(args.images), Path(args.out), models, limit=args.limit,
                           seed=args.seed, baseline=args.baseline, resolution=args.resolution,
                           masks=Path(args.masks) if args.masks else None,
                           method_settings=parse_sets(args.sets), baseline_settings=parse_sets(args.baseline_sets),
                           command=command_line("bench.evaluate", argv))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if rank == 0:
        print((Path(args.out) / "report.md").read_text())
    return 0 if results["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())

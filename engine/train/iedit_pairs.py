"""Build iEdit's weakly-supervised pairs from a folder of images (Sec. 3.1, Fig. 2).

    python -m engine.train.iedit_pairs --images FOLDER --out PAIRS.jsonl [--lexicon FILE.json]
        [--captions FILE.json] [--seed 0] [--mask-threshold 0.5] [--profile sd15|tiny] [--overwrite]

For every image x_1 of the folder:
1. caption it with BLIP (or take its caption from --captions, {"file.png": "a red car"});
2. swap exactly one noun or adjective for an antonym or a co-hyponym (WordNet, or the
   --lexicon JSON) -> the edit prompt y_2;
3. retrieve the pseudo-target x_2 from the same folder: the nearest image, by cosine, to the
   mean of the CLIP embeddings of x_1 and y_2 (x_1 itself and exact copies of it excluded);
4. CLIPSeg masks for the changed word (with the noun it describes, for an adjective) in x_1
   and x_2 -> PNGs in PAIRS_masks/ beside the pairs file.
Images whose caption has no swappable word are skipped (and counted). Bad input -> a line on
stderr and exit code 2; an existing pairs file is kept unless --overwrite.

At scale: `accelerate launch --multi_gpu --num_processes N -m engine.train.iedit_pairs ...` (the
same flags) splits the images, then the pairs, over N processes (engine/train/shards.py): one
item per image and per pair under PAIRS_work/, finished items skipped, so a killed job resumes
where it stopped; the main process merges them into the pairs file.

Guarding tests (tests/test_iedit.py): exactly one word swapped, with the adjective's noun in
y^diff: test_swap_changes_exactly_one_word, test_pair_builder; retrieval by the mean of the
image and edit-prompt embeddings, never the source or a copy of it:
test_pseudo_target_is_retrieved_by_the_mean_of_image_and_edit_prompt, test_pair_builder.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import torch
from PIL import Image

from engine.core import masks as MK
from engine.core.image import image_hash, load_image
from engine.train.iedit_data import PairRecord, write_pairs
from engine.train.shards import read_captions
from engine.train.word_swap import load_lexicon, swap_one_word

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
WORK_SIDE = 512  # images are captioned, embedded and segmented at this longest side


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"no image folder at {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def retrieve_targets(image_emb: torch.Tensor, text_emb: torch.Tensor, sources: list[int],
                     hashes: list[str]) -> list[int]:
    """Sec. 3.1: for each source i (with its edit prompt's embedding), the pool image nearest to
    mean(E_img(x_i), E_txt(y_i)); neither x_i nor a pixel-identical copy of it can be chosen."""
    from engine.core.clip import retrieval_query

    query = retrieval_query(image_emb[sources], text_emb)
    sims = query @ image_emb.T  # (n_sources, n_pool) cosine similarities
    for row, i in enumerate(sources):
        for j, h in enumerate(hashes):
            if j == i or h == hashes[i]:
                sims[row, j] = float("-inf")
    return sims.argmax(dim=1).tolist()


def _caption_one(path: Path, given: dict, lex, seed: int, models, work: Path) -> tuple[dict, list[str]]:
    """Stage 1 of one image: caption, one-word swap, CLIP image embedding (a file), pixel hash."""
    from safetensors.torch import save_file

    from engine.core.clip import image_embeddings

    try:
        photo = load_image(path, WORK_SIDE)
    except ValueError as exc:
        return {"skipped": f"skipped {path.name}: {exc}"}, []
    if path.name in given:
        text = " ".join(given[path.name].split())
    else:
        from engine.core.caption import caption

        text = caption(models.get("blip"), photo)
    swap = swap_one_word(text, lex, random.Random(f"{seed}:{path.name}"))
    emb_file = work / "embeddings" / f"{path.name}.safetensors"
    emb_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = emb_file.with_name(f".{emb_file.name}.tmp")
    save_file({"image": image_embeddings(models.get("clip"), [photo])[0].float().cpu().contiguous()}, str(tmp))
    tmp.replace(emb_file)
    record = {"caption": text, "hash": image_hash(photo), "embedding": str(emb_file),
              "swap": None if swap is None else vars(swap)}
    return record, [str(emb_file)]


def build_pairs(images_dir, out, models, lexicon: Optional[str] = None, captions: Optional[str] = None,
                seed: int = 0, mask_threshold: float = 0.5, overwrite: bool = False,
                progress: bool = True) -> tuple[list[PairRecord], list[str]]:
    """Write the pairs file and its masks; return the records and notes (skipped images...).

    A sharded, resumable job (engine/train/shards.py; run it under `accelerate launch` to split it):
    stage 1, one item per image (caption, word swap, CLIP embedding) under OUT_work/images/;
    retrieval over the whole pool's embeddings; stage 2, one item per pair (pseudo-target, CLIPSeg
    masks) under OUT_work/pairs/; the main process then writes the pairs file. A job stopped at any
    point redoes only the unfinished items; --overwrite starts over."""
    from safetensors.torch import load_file
    from tqdm.auto import tqdm

    from engine.core.clip import text_embeddings
    from engine.core.segment import clipseg_mask
    from engine.train.shards import ShardedJob, save_image

    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")
    if out.suffix != ".jsonl":
        raise ValueError(f"the pairs file must end in .jsonl, got {out.name}")
    if not 0.0 <= float(mask_threshold) <= 1.0:
        raise ValueError(f"mask threshold must be between 0 and 1, got {mask_threshold}")
    lex = load_lexicon(lexicon)
    given = read_captions(captions)
    paths = list_images(Path(images_dir))
    work = out.parent / f"{out.stem}_work"
    settings = {"images": str(Path(images_dir).resolve()), "lexicon": lexicon, "captions": given, "seed": seed,
                "profile": getattr(models, "profile", None)}

    # 1-2. captions, edit prompts and image embeddings: one item per image, split over the processes
    stage1 = ShardedJob(work / "images", signature=dict(settings, stage="images"))
    names = [p.name for p in paths]
    by_name = dict(zip(names, paths))
    for name in tqdm(stage1.mine(names), desc="captions", disable=not progress or not stage1.is_main,
                     file=sys.stderr):
        record, files = _caption_one(by_name[name], given, lex, seed, models, work / "images")
        stage1.finish(name, record, files)
    items = stage1.merge(names)
    notes = [it["record"]["skipped"] for it in items if "skipped" in it["record"]]
    pool = [it for it in items if "skipped" not in it["record"]]
    if len(pool) < 2:
        raise ValueError(f"{images_dir} holds {len(pool)} readable image(s); the retrieval needs at least 2")
    notes += [f"skipped {it['key']}: no swappable noun or adjective in '{it['record']['caption']}'"
              for it in pool if it["record"]["swap"] is None]
    sources = [k for k, it in enumerate(pool) if it["record"]["swap"] is not None]
    if not sources:
        raise ValueError("no caption had a noun or adjective with an antonym or co-hyponym; "
                         "try another lexicon or more images")

    # 3-4. pseudo-targets (mean CLIP embedding of source image and edit prompt) and CLIPSeg masks:
    # one item per pair; the pool's embeddings (n x D floats) are the only thing read whole
    stage2 = ShardedJob(work / "pairs", signature=dict(settings, stage="pairs", mask_threshold=mask_threshold))
    keys = [pool[k]["key"] for k in sources]
    todo = set(stage2.mine(keys))
    mask_dir = out.parent / f"{out.stem}_masks"
    mine = [k for k in sources if pool[k]["key"] in todo]
    if mine:
        image_emb = torch.stack([load_file(it["record"]["embedding"])["image"] for it in pool])
        swaps = [SimpleNamespace(**pool[k]["record"]["swap"]) for k in mine]
        text_emb = text_embeddings(models.get("clip"), [sw.edit_prompt for sw in swaps])
        targets = retrieve_targets(image_emb, text_emb, mine, [it["record"]["hash"] for it in pool])
        seg = models.get("clipseg")
        for i, j, swap in tqdm(list(zip(mine, targets, swaps)), desc="masks", disable=not progress or not stage2.is_main,
                               file=sys.stderr):
            files = []
            for k, phrase, role in ((i, swap.source_diff, "source"), (j, swap.target_diff, "target")):
                photo = load_image(by_name[pool[k]["key"]], WORK_SIDE)
                m = MK.binarize(clipseg_mask(seg, photo, phrase), mask_threshold)
                f = mask_dir / f"{pool[i]['key'].replace('.', '_')}_{role}.png"
                save_image(Image.fromarray((m * 255).astype(np.uint8), "L"), f)
                files.append(str(f))
            rec = PairRecord(source=str(by_name[pool[i]["key"]]), target=str(by_name[pool[j]["key"]]),
                             edit_prompt=swap.edit_prompt, source_caption=pool[i]["record"]["caption"],
                             source_word=swap.source_word, target_word=swap.target_word, pos=swap.pos,
                             source_diff=swap.source_diff, target_diff=swap.target_diff,
                             source_mask=files[0], target_mask=files[1])
            stage2.finish(pool[i]["key"], asdict(rec), files)
    records = [PairRecord(**it["record"]) for it in stage2.merge(keys)]
    if stage2.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_pairs(out, records)
    stage2.barrier()
    return records, notes


def main(argv=None) -> int:
    from engine.models import PROFILES, ModelCache

    p = argparse.ArgumentParser(prog="python -m engine.train.iedit_pairs",
                                description="Build iEdit training pairs (source, pseudo-target, edit prompt, masks).")
    p.add_argument("--images", required=True, help="folder of images (the pool)")
    p.add_argument("--out", required=True, help="pairs file to write (.jsonl); masks go to <name>_masks/")
    p.add_argument("--lexicon", help="JSON lexicon instead of WordNet: "
                                     '{"nouns": {"horse": ["zebra"]}, "adjectives": {"red": ["blue"]}}')
    p.add_argument("--captions", help='JSON {"file.png": "caption"} used instead of BLIP for those images')
    p.add_argument("--seed", type=int, default=0, help="seed of the word choices")
    p.add_argument("--mask-threshold", type=float, default=0.5, help="CLIPSeg threshold for the masks")
    p.add_argument("--overwrite", action="store_true", help="replace an existing pairs file")
    p.add_argument("--profile", choices=PROFILES, default="sd15")
    p.add_argument("--device", default=None)
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    try:
        device = args.device
        if device is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from engine.train.accel import process_state

            device = str(process_state().device)  # this process's GPU under accelerate launch
        models = ModelCache(args.profile, device=device)
        records, notes = build_pairs(args.images, args.out, models, lexicon=args.lexicon, captions=args.captions,
                                     seed=args.seed, mask_threshold=args.mask_threshold, overwrite=args.overwrite)
    except ValueError as exc:
        if rank == 0:
            print(f"error: {exc}", file=sys.stderr)
        return 2
    if rank != 0:
        return 0
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {len(records)} pairs to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

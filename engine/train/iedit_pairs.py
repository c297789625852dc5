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

Guarding tests (tests/test_iedit.py): exactly one word swapped, with the adjective's noun in
y^diff: test_swap_changes_exactly_one_word, test_pair_builder; retrieval by the mean of the
image and edit-prompt embeddings, never the source or a copy of it:
test_pseudo_target_is_retrieved_by_the_mean_of_image_and_edit_prompt, test_pair_builder.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from engine.core import masks as MK
from engine.core.image import image_hash, load_image
from engine.train.iedit_data import PairRecord, write_pairs
from engine.train.word_swap import load_lexicon, swap_one_word

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
WORK_SIDE = 512  # images are captioned, embedded and segmented at this longest side


def list_images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ValueError(f"no image folder at {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def read_captions(path: Optional[str]) -> dict[str, str]:
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"no captions file at {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f'{path}: expected {{"image file name": "caption", ...}}')
    return data


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


def build_pairs(images_dir, out, models, lexicon: Optional[str] = None, captions: Optional[str] = None,
                seed: int = 0, mask_threshold: float = 0.5, overwrite: bool = False,
                progress: bool = True) -> tuple[list[PairRecord], list[str]]:
    """Write the pairs file and its masks; return the records and notes (skipped images...)."""
    from tqdm.auto import tqdm

    from engine.core.clip import image_embeddings, text_embeddings
    from engine.core.segment import clipseg_mask

    out = Path(out)
    if out.exists() and not overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")
    if out.suffix != ".jsonl":
        raise ValueError(f"the pairs file must end in .jsonl, got {out.name}")
    if not 0.0 <= float(mask_threshold) <= 1.0:
        raise ValueError(f"mask threshold must be between 0 and 1, got {mask_threshold}")
    lex = load_lexicon(lexicon)
    given = read_captions(captions)
    notes: list[str] = []

    paths, photos = [], []
    for path in list_images(Path(images_dir)):
        try:
            photos.append(load_image(path, WORK_SIDE))
            paths.append(path)
        except ValueError as exc:
            notes.append(f"skipped {path.name}: {exc}")
    if len(photos) < 2:
        raise ValueError(f"{images_dir} holds {len(photos)} readable image(s); the retrieval needs at least 2")

    # 1-2. captions and edit prompts
    swaps, sources = [], []
    for i, (path, photo) in enumerate(tqdm(list(zip(paths, photos)), desc="captions", disable=not progress,
                                           file=sys.stderr)):
        if path.name in given:
            text = " ".join(given[path.name].split())
        else:
            from engine.core.caption import caption

            text = caption(models.get("blip"), photo)
        swap = swap_one_word(text, lex, random.Random(f"{seed}:{path.name}"))
        if swap is None:
            notes.append(f"skipped {path.name}: no swappable noun or adjective in '{text}'")
            continue
        swaps.append((text, swap))
        sources.append(i)
    if not swaps:
        raise ValueError("no caption had a noun or adjective with an antonym or co-hyponym; "
                         "try another lexicon or more images")

    # 3. pseudo-targets by the mean CLIP embedding of source image and edit prompt
    clip = models.get("clip")
    image_emb = torch.cat([image_embeddings(clip, photos[k:k + 32]) for k in range(0, len(photos), 32)])
    text_emb = text_embeddings(clip, [s.edit_prompt for _, s in swaps])
    targets = retrieve_targets(image_emb, text_emb, sources, [image_hash(p) for p in photos])

    # 4. CLIPSeg masks of the changed word in both images, saved beside the pairs file
    mask_dir = out.parent / f"{out.stem}_masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    seg = models.get("clipseg")
    records = []
    for k, ((text, swap), i, j) in enumerate(tqdm(list(zip(swaps, sources, targets)), desc="masks",
                                                  disable=not progress, file=sys.stderr)):
        files = []
        for photo, phrase, role in ((photos[i], swap.source_diff, "source"), (photos[j], swap.target_diff, "target")):
            m = MK.binarize(clipseg_mask(seg, photo, phrase), mask_threshold)
            f = mask_dir / f"{k:06d}_{role}.png"
            Image.fromarray((m * 255).astype(np.uint8), "L").save(f)
            files.append(str(f))
        records.append(PairRecord(source=str(paths[i]), target=str(paths[j]), edit_prompt=swap.edit_prompt,
                                  source_caption=text, source_word=swap.source_word, target_word=swap.target_word,
                                  pos=swap.pos, source_diff=swap.source_diff, target_diff=swap.target_diff,
                                  source_mask=files[0], target_mask=files[1]))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_pairs(out, records)
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
    try:
        models = ModelCache(args.profile, device=args.device)
        records, notes = build_pairs(args.images, args.out, models, lexicon=args.lexicon, captions=args.captions,
                                     seed=args.seed, mask_threshold=args.mask_threshold, overwrite=args.overwrite)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {len(records)} pairs to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

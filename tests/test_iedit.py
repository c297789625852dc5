"""iEdit (METHODS.md section 5): masked SDEdit inference, checkpoints, training and pair building,
on tiny random models (CPU, 64 px, a few steps)."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine.core import sampling as S
from engine.methods import iedit, sdedit

RES = 96


@pytest.fixture(scope="module")
def small():
    """The example cat at the test resolution (96x64), so masks drawn at its size fit as they are."""
    from engine.core.image import load_image

    return load_image(Path(__file__).resolve().parent.parent / "assets" / "examples" / "cat.png", RES)


def _half_mask(photo: Image.Image) -> Image.Image:
    m = Image.new("L", photo.size, 0)
    ImageDraw.Draw(m).rectangle((0, 0, photo.width // 2 - 1, photo.height - 1), fill=255)
    return m


def _run(tiny_models, small, **kw):
    args = dict(image=small, prompt="a photo of a dog", mask=_half_mask(small), mask_source="brush",
                steps=4, num_results=2, resolution=RES)
    args.update(kw)
    return iedit.run(iedit.IEditInputs(**args), tiny_models)


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(module, snap) -> bool:
    state = module.state_dict()
    return state.keys() == snap.keys() and all(torch.equal(state[k], snap[k]) for k in snap)


# -- inference (Eq. 13) -------------------------------------------------------------------------------
def test_outside_mask_final_latents_equal_input(tiny_models):
    sd = tiny_models.sd()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 8, 8, generator=gen)
    noise = torch.randn(3, 4, 8, 8, generator=gen)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 1:5] = 1
    cond = S.encode_prompts(sd, ["a photo of a cat"])
    uncond = S.encode_prompts(sd, [""])
    counter = S.UNetCounter()
    with torch.no_grad():
        out = iedit.masked_sdedit(sd.unet, sd.scheduler(), x0, noise, cond, uncond, mask, steps=10,
                                  strength=0.7, cfg=7.5, counter=counter)
    keep = (mask == 0).expand_as(out)
    assert out.shape == (3, 4, 8, 8)
    assert torch.equal(out[keep], x0.expand_as(out)[keep])          # blending at t = 0: exactly the input
    assert not torch.allclose(out[~keep], x0.expand_as(out)[~keep])  # inside M the latents changed
    assert counter.forward == 7                                     # round(0.7 * 10) DDIM steps, CFG in one batch


def test_full_mask_equals_plain_sdedit(tiny_models, small):
    full = Image.new("L", small.size, 255)
    a = _run(tiny_models, small, mask=full, seed=3)
    b = sdedit.run(sdedit.SDEditInputs(image=small, prompt="a photo of a dog", strength=0.7, steps=4, cfg=7.5,
                                       seed=3, num_results=2, resolution=RES), tiny_models)
    assert len(a.images) == len(b.images) == 2
    for x, y in zip(a.images, b.images):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_four_results_differ_and_seed_is_deterministic(tiny_models, small):
    r = _run(tiny_models, small, num_results=4, steps=3, seed=7)
    arrays = [np.asarray(im) for im in r.images]
    assert len(arrays) == 4
    assert all(not np.array_equal(arrays[i], arrays[j]) for i in range(4) for j in range(i + 1, 4))
    again = _run(tiny_models, small, num_results=4, steps=3, seed=7)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(arrays, again.images))
    assert r.params["mode"] == "base" and any("without iEdit's fine-tuning" in n for n in r.notes)
    assert r.unet_evals == {"forward": 2, "backward": 0}
    assert set(r.intermediates) == {"mask"} and r.intermediates["mask"].size == r.images[0].size


def test_clipseg_mask_and_empty_mask_error(tiny_models, small):
    r = _run(tiny_models, small, mask=None, mask_source="clipseg", mask_text="cat", mask_threshold=0.0,
             prompt="a photo of a cat", num_results=1, steps=2)
    assert r.params["mask_coverage"] == 1.0 and "CLIPSeg" in r.notes[0]
    with pytest.raises(ValueError, match="CLIPSeg did not find 'cat'"):
        _run(tiny_models, small, mask=None, mask_source="clipseg", mask_text="cat", mask_threshold=1.0)


@pytest.mark.parametrize("kw, message", [
    (dict(strength=0.1), "sampling ratio"),
    (dict(strength=1.5), "sampling ratio"),
    (dict(num_results=5), "number of results"),
    (dict(mask_source="lasso"), "mask source"),
    (dict(mask=None), "no mask was painted"),
    (dict(mask=Image.new("L", (96, 64), 0)), "brush mask is empty"),
    (dict(mask_source="clipseg", mask_text=" "), "type the edit term"),
    (dict(prompt=""), "edit prompt is empty"),
    (dict(checkpoint="/nonexistent/iedit"), "no checkpoint at"),
])
def test_bad_input(tiny_models, small, kw, message):
    with pytest.raises(ValueError, match=message):
        _run(tiny_models, small, **kw)


# -- checkpoints -------------------------------------------------------------------------------------
def test_wrong_shape_checkpoints_are_refused(tiny_models, small, tmp_path):
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    other = UNet2DConditionModel(sample_size=8, block_out_channels=(32, 32), layers_per_block=1,
                                 cross_attention_dim=16, attention_head_dim=8,
                                 down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=32)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="does not fit the base UNet"):
        _run(tiny_models, small, checkpoint=str(tmp_path / "other"))
    other.add_adapter(LoraConfig(r=2, target_modules=["to_k", "to_v"], init_lora_weights=False), adapter_name="x")
    other.save_lora_adapter(tmp_path / "lora", adapter_name="x")
    with pytest.raises(ValueError, match="LoRA .* does not fit"):
        _run(tiny_models, small, checkpoint=str(tmp_path / "lora"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="only .safetensors"):
        _run(tiny_models, small, checkpoint=str(tmp_path / "weights.bin"))


def test_lora_checkpoint_runs_and_leaves_cached_unet_intact(tiny_models, small, tmp_path):
    from peft import LoraConfig

    unet = tiny_models.sd().unet
    before = _snapshot(unet)
    lora = copy.deepcopy(unet)
    lora.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False), adapter_name="x")
    lora.save_lora_adapter(tmp_path, adapter_name="x")
    tuned = _run(tiny_models, small, checkpoint=str(tmp_path), num_results=1, steps=2)
    base = _run(tiny_models, small, num_results=1, steps=2)
    assert tuned.params["mode"] == "fine-tuned" and any("LoRA" in n for n in tuned.notes)
    assert not np.array_equal(np.asarray(tuned.images[0]), np.asarray(base.images[0]))
    assert _same(unet, before) and type(unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q) \
        is torch.nn.Linear and not getattr(unet, "peft_config", None)


# -- edit prompts and pairs (Sec. 3.1) -------------------------------------------------------------------
LEXICON = {"nouns": {"circle": ["square", "triangle"], "square": ["circle"], "car": ["bus", "truck"]},
           "adjectives": {"red": ["blue", "green"], "blue": ["red", "yellow"], "green": ["yellow"],
                          "yellow": ["green"], "big": ["small"]}}


@pytest.fixture()
def lexicon_file(tmp_path):
    path = tmp_path / "lexicon.json"
    path.write_text(json.dumps(LEXICON))
    return path


def test_swap_changes_exactly_one_word(lexicon_file):
    from engine.train.word_swap import JsonLexicon, swap_one_word

    lex = JsonLexicon(lexicon_file)
    captions = ["a photo of a red car on the road", "A big blue square, on white", "a yellow circle"]
    for caption in captions:
        for seed in range(8):
            s = swap_one_word(caption, lex, random.Random(seed))
            a, b = caption.split(), s.edit_prompt.split()
            assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
            assert a[s.index] != b[s.index] and s.target_word in b[s.index].lower()
            nxt = a[s.index + 1].strip(",").lower() if s.index + 1 < len(a) else ""
            if s.pos == "adjective" and nxt in ("car", "square", "circle"):
                # Sec. 3.4: an adjective's difference prompt carries the noun it describes
                assert (s.source_diff, s.target_diff) == (f"{s.source_word} {nxt}", f"{s.target_word} {nxt}")
            else:
                assert (s.source_diff, s.target_diff) == (s.source_word, s.target_word)
    assert swap_one_word("a photo of the sky", lex, random.Random(0)) is None


def test_wordnet_or_how_to_fetch_it():
    from engine.train.word_swap import WordNetLexicon, swap_one_word

    try:
        lex = WordNetLexicon()
    except ValueError as exc:
        assert "python -m nltk.downloader wordnet" in str(exc) and "--lexicon" in str(exc)
        return
    s = swap_one_word("a brown horse eating grass", lex, random.Random(0))
    assert s is not None and sum(x != y for x, y in zip("a brown horse eating grass".split(),
                                                        s.edit_prompt.split())) == 1


def _shapes_folder(folder):
    folder.mkdir()
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 30)}
    captions = {}
    for c, rgb in colours.items():
        for shape in ("circle", "square"):
            im = Image.new("RGB", (64, 64), (240, 240, 240))
            draw = ImageDraw.Draw(im)
            (draw.ellipse if shape == "circle" else draw.rectangle)((16, 16, 48, 48), fill=rgb)
            im.save(folder / f"{c}_{shape}.png")
            captions[f"{c}_{shape}.png"] = f"a photo of a {c} {shape}"
    Image.open(folder / "red_circle.png").save(folder / "red_circle_copy.png")  # a duplicate of a source
    captions["red_circle_copy.png"] = "a photo of a red circle"
    return captions


def test_pair_builder(tiny_models, tmp_path, lexicon_file):
    from engine.core.image import image_hash, load_image
    from engine.train import iedit_pairs
    from engine.train.iedit_data import read_pairs

    caps = _shapes_folder(tmp_path / "imgs")
    del caps["yellow_square.png"]  # this one is captioned by (tiny, random) BLIP
    (tmp_path / "captions.json").write_text(json.dumps(caps))
    out = tmp_path / "pairs.jsonl"
    records, notes = iedit_pairs.build_pairs(tmp_path / "imgs", out, tiny_models, lexicon=str(lexicon_file),
                                             captions=str(tmp_path / "captions.json"), progress=False)
    assert len(records) == 9 and not notes
    blip = [r for r in records if r.source.endswith("yellow_square.png")][0]
    assert blip.source_caption not in caps.values() and blip.source_word == "car"  # the lexicon knows "car"
    back = read_pairs(out)
    assert [r.edit_prompt for r in back] == [r.edit_prompt for r in records]
    for r in back:
        a, b = r.source_caption.split(), r.edit_prompt.split()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1
        assert r.target != r.source
        assert image_hash(load_image(r.target, 64)) != image_hash(load_image(r.source, 64))
        for m in (r.source_mask, r.target_mask):
            assert Image.open(m).size == (512, 512) and m.startswith(str(tmp_path / "pairs_masks"))
    # an existing pairs file is kept unless --overwrite (exit 2 before any model loads)
    assert iedit_pairs.main(["--images", str(tmp_path / "imgs"), "--out", str(out), "--profile", "tiny",
                             "--lexicon", str(lexicon_file)]) == 2


def test_pseudo_target_is_retrieved_by_the_mean_of_image_and_edit_prompt(tiny_models, tmp_path, monkeypatch):
    """Sec. 3.1 through build_pairs: with a CLIP whose embeddings are known (one axis per colour and
    per shape word), the pseudo-target of every pair is the image showing the edit prompt's colour
    and shape: the nearest neighbour of mean(E_img(x_1), E_txt(y_2)), not of the source alone."""
    from engine.core import clip as CL
    from engine.train import iedit_pairs

    vocab = ["red", "blue", "green", "yellow", "circle", "square"]
    rgb = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 30)}

    def image_vec(im):
        a = np.asarray(im.convert("RGB"), dtype=float)
        h, w = a.shape[:2]
        centre, corner = a[h // 2, w // 2], a[int(0.3 * h), int(0.3 * w)]
        colour = min(rgb, key=lambda c: np.abs(centre - rgb[c]).sum())
        shape = "square" if np.abs(corner - centre).sum() < 30 else "circle"
        return [float(v in (colour, shape)) for v in vocab]

    def text_vec(text):
        words = text.lower().replace(",", " ").split()
        return [float(v in words) for v in vocab]

    norm = torch.nn.functional.normalize
    monkeypatch.setattr(CL, "image_embeddings", lambda clip, ims: norm(torch.tensor([image_vec(i) for i in ims]), dim=-1))
    monkeypatch.setattr(CL, "text_embeddings", lambda clip, texts: norm(torch.tensor([text_vec(t) for t in texts]), dim=-1))
    caps = _shapes_folder(tmp_path / "imgs")
    (tmp_path / "captions.json").write_text(json.dumps(caps))
    lex = tmp_path / "lex.json"
    lex.write_text(json.dumps({"nouns": {"circle": ["square"], "square": ["circle"]},
                               "adjectives": {c: [d for d in rgb if d != c] for c in rgb}}))
    records, _ = iedit_pairs.build_pairs(tmp_path / "imgs", tmp_path / "pairs.jsonl", tiny_models, lexicon=str(lex),
                                         captions=str(tmp_path / "captions.json"), progress=False)
    assert len(records) == 9
    for r in records:
        colour, shape = r.edit_prompt.split()[-2:]
        assert Path(r.target).name == f"{colour}_{shape}.png", (r.edit_prompt, r.source, r.target)


# -- training (Sec. 3.3-3.4) ----------------------------------------------------------------------------------
def _pairs_file(tmp_path) -> str:
    img = tmp_path / "img"
    img.mkdir()
    for name, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        im = Image.new("RGB", (64, 64), (240, 240, 240))
        ImageDraw.Draw(im).ellipse((12, 12, 52, 52), fill=colour)
        im.save(img / f"{name}.png")
    m = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(m).rectangle((12, 12, 52, 52), fill=255)
    m.save(img / "mask.png")
    pair = {"source": "img/red.png", "target": "img/blue.png", "edit_prompt": "a photo of a blue circle",
            "source_caption": "a photo of a red circle", "source_diff": "red circle", "target_diff": "blue circle",
            "source_mask": "img/mask.png", "target_mask": "img/mask.png"}
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps(pair) + "\n")
    return str(path)


def test_training_lowers_loss_and_checkpoint_loads(tiny_models, small, tmp_path, monkeypatch):
    from engine.train import iedit as T

    unet = tiny_models.sd().unet
    before = _snapshot(unet)
    pairs, out = _pairs_file(tmp_path), tmp_path / "run"
    seen = []
    result = T.train(T.TrainConfig(pairs=pairs, out=str(out), steps=10, resolution=RES, save_every=10),
                     tiny_models, on_step=lambda i, n, losses: seen.append(losses), progress=False)
    assert result.eval_loss_end < result.eval_loss_start
    assert len(seen) == 10 and all(np.isfinite(v["loss"]) for v in seen)
    assert (out / "checkpoint-000010" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert _same(unet, before) and not any(p.requires_grad for p in unet.parameters())

    # The checkpoint loads back into the method (and through the CLI) as "fine-tuned".
    tuned = _run(tiny_models, small, checkpoint=str(out), num_results=1, steps=2)
    base = _run(tiny_models, small, num_results=1, steps=2)
    assert tuned.params["mode"] == "fine-tuned"
    assert not np.array_equal(np.asarray(tuned.images[0]), np.asarray(base.images[0]))
    assert _same(unet, before)

    # Never overwritten without --overwrite; --resume continues from step 10.
    assert T.main(["--pairs", pairs, "--out", str(out), "--steps", "12", "--profile", "tiny"]) == 2
    resumed = T.train(T.TrainConfig(pairs=pairs, out=str(out), steps=12, resolution=RES, save_every=10,
                                    resume=True), tiny_models, progress=False)
    assert resumed.step == 12 and (out / "checkpoint-000012").is_dir() and (out / "checkpoint-000010").is_dir()
    state = json.loads((out / "checkpoint-000012" / "trainer_state.json").read_text())
    assert [row["step"] for row in state["losses"]] == list(range(1, 13))
    assert [row["blocks"] for row in state["losses"][:2]] == ["input", "middle"]  # alternate updates


def test_pairs_file_with_missing_images(tmp_path, capsys):
    from engine.train import iedit as T
    from engine.train.iedit_data import read_pairs

    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"source": "nowhere/a.png", "target": "nowhere/b.png", "edit_prompt": "x"}) + "\n"
                    + "{not json\n")
    with pytest.raises(ValueError, match="source image not found.*nowhere/a.png"):
        read_pairs(path)
    assert T.main(["--pairs", str(path), "--out", str(tmp_path / "o"), "--profile", "tiny", "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "target image not found" in err and "line 2: not JSON" in err


def test_cli_writes_results(tiny_models, small, tmp_path, monkeypatch):
    from engine.__main__ import main

    monkeypatch.setenv("DES_CACHE_DIR", str(tiny_models.cache_dir))
    small.save(tmp_path / "in.png")
    _half_mask(small).save(tmp_path / "mask.png")
    code = main(["iedit", "--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "out"), "--prompt",
                 "a photo of a dog", "--mask", str(tmp_path / "mask.png"), "--num-results", "2", "--steps", "2",
                 "--profile", "tiny", "--resolution", str(RES), "--device", "cpu"])
    assert code == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["params"]["mode"] == "base" and report["params"]["mask_source"] == "brush"
    assert (tmp_path / "out" / "edited_1.png").is_file() and report["intermediates"] == {"mask": "mask.png"}
    assert main(["iedit", "--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "o2"), "--prompt", "x",
                 "--mask-text", "cat", "--mask-threshold", "1", "--profile", "tiny", "--resolution", str(RES),
                 "--device", "cpu", "--steps", "1"]) == 2

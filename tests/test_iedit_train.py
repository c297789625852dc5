"""iEdit's training mechanisms (Sec. 3.3-3.4, Eq. 2-12, Sec. 4.1), observed through the training
entry point `engine.train.iedit.train` (issue 14): a spy around the loss records what each
training step is fed and the values it returns, which are checked against the paper's
equations written out here; checkpoints show which blocks each step updated; a loss weight
must move the update. Also the pairs streaming from disk (one pair read per step).
Tiny random models, 64 px, 1-3 steps."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from engine.core import clip as CL
from engine.core import sampling as S
from engine.train import iedit as T
from engine.train import iedit_data as D
from engine.train.perceptual import perceptual_loss

RES = 64


@pytest.fixture(autouse=True)
def quick_eval(monkeypatch):
    """The trainer's progress evaluation (Eq. 12 on fixed pairs and timesteps) on one pair at one
    timestep: it is not what these tests check, and it dominates their time on tiny models."""
    monkeypatch.setattr(T, "EVAL_PAIRS", 1)
    monkeypatch.setattr(T, "EVAL_TIMESTEPS", (500,))


def _write_pairs(folder: Path, n: int = 2) -> Path:
    """n pairs over four 64 px images; the source mask M_1 (left) and target mask M_2 (right) differ."""
    folder.mkdir(parents=True, exist_ok=True)
    shapes = {"red_circle": ((220, 30, 30), "ellipse"), "blue_square": ((30, 30, 220), "rectangle"),
              "green_circle": ((30, 200, 30), "ellipse"), "yellow_square": ((230, 220, 30), "rectangle")}
    for name, (rgb, kind) in shapes.items():
        im = Image.new("RGB", (64, 64), (240, 240, 240))
        getattr(ImageDraw.Draw(im), kind)((12, 12, 52, 52), fill=rgb)
        im.save(folder / f"{name}.png")
    for name, box in (("left", (0, 8, 39, 55)), ("right", (24, 16, 63, 47))):
        m = Image.new("L", (64, 64), 0)
        ImageDraw.Draw(m).rectangle(box, fill=255)
        m.save(folder / f"mask_{name}.png")
    base = [("red_circle", "blue_square", "a photo of a blue square", "red circle", "blue square"),
            ("green_circle", "yellow_square", "a photo of a yellow square", "green circle", "yellow square")]
    lines = []
    for k in range(n):
        src, tgt, prompt, d1, d2 = base[k % 2]
        lines.append(json.dumps({"source": f"{src}.png", "target": f"{tgt}.png", "edit_prompt": prompt,
                                 "source_diff": d1, "target_diff": d2,
                                 "source_mask": "mask_left.png", "target_mask": "mask_right.png"}))
    path = folder / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _cfg(pairs, out, **kw):
    args = dict(pairs=str(pairs), out=str(out), steps=2, resolution=RES, save_every=100)
    args.update(kw)
    return T.TrainConfig(**args)


class LossSpy:
    """Wraps T.iedit_loss: keeps (pair, t, eps1, returned values) of every training step (the
    calls with gradients; the evaluation runs without) and the paper's values on the same inputs."""

    def __init__(self, monkeypatch, models, oracle: bool = True):
        self.steps: list[dict] = []
        real = T.iedit_loss

        def spy(unet, p, t, eps1, models_, alphas, lambda_perc, counter=None):
            out = real(unet, p, t, eps1, models_, alphas, lambda_perc, counter)
            if torch.is_grad_enabled():
                row = dict(p=p, t=t, eps1=eps1.detach().clone(), got={k: float(v.detach()) for k, v in out.items()})
                if oracle:
                    with torch.no_grad():
                        row["want"] = paper_loss(unet, p, t, eps1, models, alphas, lambda_perc)
                self.steps.append(row)
            return out

        monkeypatch.setattr(T, "iedit_loss", spy)


def _times_mask(x, m):
    """x ⊙ M for an image in [-1, 1]: multiplied in [0, 1], i.e. black outside M."""
    return ((x + 1) / 2 * m) * 2 - 1


def paper_loss(unet, p, t, eps1, models, alphas, lambda_perc) -> dict[str, float]:
    """Eq. 2-12 written out from the paper, on the pair `p` as the trainer prepared it."""
    sd, clip, vgg = models.sd(), models.get("clip"), models.get("vgg")
    a = alphas[t]
    z_t = a.sqrt() * p.z1 + (1 - a).sqrt() * eps1                                  # Eq. 2
    eps2 = (z_t - a.sqrt() * p.z2) / (1 - a).sqrt()                                 # Eq. 3
    e = unet(z_t, t, encoder_hidden_states=p.y2).sample
    fg = ((eps2 * p.m2_lat - e * p.m2_lat) ** 2).mean()                             # Eq. 9
    bg = ((eps1 * (1 - p.m1_lat) - e * (1 - p.m1_lat)) ** 2).mean()
    z1_hat = (z_t - (1 - a).sqrt() * e) / a.sqrt()                                  # Eq. 7
    x1_hat = sd.vae.decode(z1_hat / sd.vae.config.scaling_factor).sample.clamp(-1, 1)  # Eq. 6
    glob = 1 - (CL.embed_pixels(clip, x1_hat) * p.clip_y2).sum()                    # Eq. 5
    loc = 1 - (CL.embed_pixels(clip, _times_mask(x1_hat, p.m1)) * p.clip_y2_diff).sum()  # Eq. 11
    perc = perceptual_loss(vgg, _times_mask(x1_hat, p.m1), _times_mask(p.x2, p.m2))  # Eq. 10
    w = t / alphas.shape[0]
    total = (1 - w) * (loc + glob) + w * (fg + bg) + lambda_perc * perc             # Eq. 8, 12
    return {"loss": float(total), "mask": float(fg + bg), "fg": float(fg), "bg": float(bg),
            "global": float(glob), "loc": float(loc), "perc": float(perc)}


def _source_pair(models, rec: D.PairRecord) -> dict[str, torch.Tensor]:
    """What a training step must see for record `rec`: E(x_1), E(x_2), x_2, M_1, M_2 from the files,
    the SD text embedding of y_2 and the CLIP embeddings of y_2 and y_2^diff."""
    sd, clip = models.sd(), models.get("clip")
    pt = D.load_pair(rec, RES)
    return {"z1": S.encode_image(sd, pt.source_image), "z2": S.encode_image(sd, pt.target_image), "x2": pt.x2,
            "m1": pt.m1, "m2": pt.m2, "y2": S.encode_prompts(sd, [rec.edit_prompt]),
            "clip_y2": CL.text_embeddings(clip, [rec.edit_prompt]),
            "clip_y2_diff": CL.text_embeddings(clip, [rec.y2_diff])}


def test_every_training_step_optimises_eq_2_to_12_on_its_own_pair(tiny_models, tmp_path, monkeypatch):
    """Each step of `train` is fed one pair's own tensors (z_1 = E(source), z_2 = E(target), M_1 of
    the source, M_2 of the target, y_2, y_2^diff), noise eps_1 ~ N(0, 1) of z_1's shape, and
    returns the paper's L_mask (eps_2 inside M_2, eps_1 outside M_1), L_global, L_loc, L_perc
    and their Eq. 12 combination with weights (1 - t/T) and t/T."""
    pairs = _write_pairs(tmp_path / "data")
    records = D.read_pairs(pairs)
    want_pairs = [_source_pair(tiny_models, r) for r in records]
    spy = LossSpy(monkeypatch, tiny_models)
    T.train(_cfg(pairs, tmp_path / "run", steps=3, lambda_perc=0.5), tiny_models, progress=False)
    assert len(spy.steps) == 3
    for row in spy.steps:
        p = row["p"]
        matches = [k for k, w in enumerate(want_pairs) if torch.allclose(p.z1, w["z1"], atol=1e-4)]
        assert len(matches) == 1, "z_1 is not the latent of a source image"
        w = want_pairs[matches[0]]
        assert torch.allclose(p.z2, w["z2"], atol=1e-4), "z_2 is not the latent of the pair's target"
        assert torch.allclose(p.x2, w["x2"], atol=1e-5)
        assert torch.equal(p.m1, w["m1"]) and torch.equal(p.m2, w["m2"]), "M_1 / M_2 are not the pair's masks"
        assert torch.allclose(p.m1_lat, F.interpolate(w["m1"], size=p.z1.shape[-2:], mode="area"))
        assert torch.allclose(p.m2_lat, F.interpolate(w["m2"], size=p.z1.shape[-2:], mode="area"))
        assert torch.allclose(p.y2, w["y2"], atol=1e-5)
        assert torch.allclose(p.clip_y2, w["clip_y2"], atol=1e-5)
        assert torch.allclose(p.clip_y2_diff, w["clip_y2_diff"], atol=1e-5)
        assert row["eps1"].shape == p.z1.shape and 0.7 < float(row["eps1"].std()) < 1.3
        assert 0 <= row["t"] < 1000
        for key, value in row["want"].items():
            assert row["got"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{key} at t={row['t']}"
    assert len({row["t"] for row in spy.steps}) > 1  # t is drawn per step


def _unet_state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def _changed(a: dict, b: dict) -> set[str]:
    """The top-level UNet parts (conv_in, down_blocks, mid_block, up_blocks...) whose tensors differ."""
    return {k.split(".")[0] for k in a if not torch.equal(a[k], b[k])}


def test_input_and_middle_blocks_are_updated_alternately(tiny_models, tmp_path):
    """Sec. 4.1: step 1 updates only the input blocks (conv_in + down blocks), step 2 only the
    middle block, step 3 the input blocks again; nothing else ever changes."""
    pairs = _write_pairs(tmp_path / "data")
    out = tmp_path / "run"
    T.train(_cfg(pairs, out, steps=3, save_every=1), tiny_models, progress=False)
    base = {k: v.detach().cpu() for k, v in tiny_models.sd().unet.state_dict().items()}
    s1, s2, s3 = (_unet_state(out / f"checkpoint-{k:06d}") for k in (1, 2, 3))
    assert _changed(base, s1) == {"conv_in", "down_blocks"}
    assert _changed(s1, s2) == {"mid_block"}
    assert _changed(s2, s3) == {"conv_in", "down_blocks"}


def _perc_after_one_step(tiny_models, pairs, out, monkeypatch, lambda_perc):
    spy = LossSpy(monkeypatch, tiny_models, oracle=False)
    T.train(_cfg(pairs, out, steps=1, save_every=1, lr=1e-5, lambda_perc=lambda_perc), tiny_models,
            progress=False)
    row = spy.steps[0]
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(out / "checkpoint-000001" / "unet"))
    alphas = tiny_models.sd().scheduler().alphas_cumprod.float()
    with torch.no_grad():
        after = paper_loss(unet, row["p"], row["t"], row["eps1"], tiny_models, alphas, lambda_perc)
    return row["got"]["perc"], after["perc"], row["t"]


def test_perceptual_weight_steers_the_update(tiny_models, tmp_path, monkeypatch):
    """Eq. 12's lambda_perc reaches the gradient: one step with a large lambda_perc lowers L_perc
    (Eq. 10) on that step's inputs, and lowers it more than the same step with lambda_perc = 0."""
    pairs = _write_pairs(tmp_path / "data")
    before, heavy, t = _perc_after_one_step(tiny_models, pairs, tmp_path / "heavy", monkeypatch, 1000.0)
    before0, light, t0 = _perc_after_one_step(tiny_models, pairs, tmp_path / "light", monkeypatch, 0.0)
    assert t == t0 and before == pytest.approx(before0)  # the same step, pair and noise
    assert heavy < before and heavy < light, (before, heavy, light)


# -- streaming the pairs from disk ---------------------------------------------------------------------
def test_pairs_stream_from_disk_memory_does_not_grow_with_the_pairs(tiny_models, tmp_path, monkeypatch):
    """Training reads a pair from disk when a step needs it: with 8 or 64 pairs, two steps load the
    same number of pairs (the evaluation pairs + one per step), and the dataset holds no tensors."""
    loads = []
    real = D.load_pair
    monkeypatch.setattr(D, "load_pair", lambda rec, size: loads.append(rec.source) or real(rec, size))
    counts = []
    for n in (8, 64):
        pairs = _write_pairs(tmp_path / f"data{n}", n)
        ds = D.PairDataset(pairs, RES)
        assert len(ds) == n and not any(isinstance(v, torch.Tensor) for r in ds.records for v in vars(r).values())
        loads.clear()
        result = T.train(_cfg(pairs, tmp_path / f"run{n}", steps=2, save_every=2), tiny_models, progress=False)
        counts.append(len(loads))
        assert np.isfinite(result.eval_loss_end)
    assert counts[0] == counts[1] == T.EVAL_PAIRS + 2, counts  # 1 evaluation pair + 2 steps


def test_loader_workers_give_the_same_steps_and_pairs_are_drawn_from_the_whole_set(tiny_models, tmp_path):
    """The pairs of a step depend on (seed, step) only: training with a background loader process
    records the same pairs, timesteps and losses as training without; over a few steps more than
    one pair of the file is used; two shards of the pairs file split it."""
    pairs = _write_pairs(tmp_path / "data", 6)
    rows = []
    for workers in (0, 1):
        out = tmp_path / f"run{workers}"
        T.train(_cfg(pairs, out, steps=3, save_every=3, workers=workers), tiny_models, progress=False)
        state = json.loads((out / "checkpoint-000003" / "trainer_state.json").read_text())
        rows.append([(r["pair"], r["t"], round(r["loss"], 4)) for r in state["losses"]])
    assert rows[0] == rows[1]
    assert len({pair for pair, _, _ in rows[0]}) > 1
    a, b = D.PairDataset(pairs, RES, shard=(0, 2)), D.PairDataset(pairs, RES, shard=(1, 2))
    assert len(a) == len(b) == 3 and {r.source for r in a.records} != {r.source for r in b.records}
    with pytest.raises(ValueError, match="shard"):
        D.PairDataset(pairs, RES, shard=(2, 2))

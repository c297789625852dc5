"""IIR-Net: the removal module R(x0) (Eq. 4-7), both sampling modes, the training script
(Eq. 8) and the refusals of bad checkpoints and bad input (METHODS.md section 3)."""
import hashlib
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from engine.core import sampling as S
from engine.core.iir_checkpoint import clear_cache
from engine.core.masks import to_latent
from engine.core.phrases import noun_phrase
from engine.core.removal import (CONDITION_CHANNELS, MAX_NOISE, condition, edge_tensor, mask_tensor,
                                 removal_image, rgb2gray)
from engine.methods import iir_net
from engine.train import iir_net as trainer

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def no_default_checkpoint(monkeypatch):
    monkeypatch.delenv("DES_IIR_CHECKPOINT", raising=False)


def _picture(seed: int = 0, size: int = 64) -> Image.Image:
    """A coloured background with a coloured square: edges for Canny, colour for the RoI."""
    rng = np.random.default_rng(seed)
    a = np.empty((size, size, 3), np.uint8)
    a[:] = rng.integers(0, 256, 3)
    y, x = rng.integers(4, size // 2, 2)
    a[y:y + size // 3, x:x + size // 3] = rng.integers(0, 256, 3)
    a = np.clip(a.astype(np.int16) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def _left_half(size=(64, 64)) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, (0, 0, size[0] // 2, size[1]))
    return mask


def _run(models, **kw):
    args = dict(image=_picture(), prompt="a green square", mask=_left_half(), steps=4, resolution=64)
    args.update(kw)
    return iir_net.run(iir_net.IIRNetInputs(**args), models)


def _digest(module) -> str:
    h = hashlib.sha1()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()


# -- the noun phrase of the prompt ---------------------------------------------------------------
@pytest.mark.parametrize("prompt, phrase", [
    ("a green airplane", "airplane"), ("A tennis player in yellow shirt", "tennis player"),
    ("A green orange", "orange"), ("A woman skiing on grassland", "woman"), ("Red apples", "apples"),
    ("make the car red", "car"), ("a photo of a wooden boat", "boat"), ("Daylight, sunny", None),
    ("green", None), ("in the style of van gogh", None), ("", None)])
def test_noun_phrase(prompt, phrase):
    assert noun_phrase(prompt) == phrase


# -- R(x0), Eq. 4-7 ------------------------------------------------------------------------------
def test_removal_keeps_outside_grays_inside_and_has_four_channels(tiny_models):
    alphas = tiny_models.sd().scheduler().alphas_cumprod
    x = S.pil_to_tensor(_picture(1))
    m = mask_tensor(np.asarray(_left_half(), np.float32) / 255)
    inside, outside = m.bool().expand_as(x), ~m.bool().expand_as(x)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    for k in (0, 250, MAX_NOISE):
        x_k = removal_image(x, m, k, noise, alphas)
        assert torch.equal(x_k[outside], x[outside]), f"outside the RoI changed at k={k}"
    x_0 = removal_image(x, m, 0, noise, alphas)
    gray = x_0[:, :, :, :32]
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    assert torch.allclose(gray, rgb2gray(x)[:, :, :, :32], atol=1e-6)
    assert not torch.allclose(x[:, 0, :, :32], x[:, 1, :, :32], atol=1e-2)  # it was coloured before
    # More noise, less of the gray image left inside (Eq. 5-6): correlation falls with k.
    corr = [np.corrcoef(removal_image(x, m, k, noise, alphas)[inside].numpy(), x_0[inside].numpy())[0, 1]
            for k in (0, 300, MAX_NOISE)]
    assert corr[0] > 0.999 and corr[0] > corr[1] > corr[2] and corr[2] < 0.3
    edges = edge_tensor(_picture(1))
    r = condition(x_0, edges)
    assert r.shape == (1, CONDITION_CHANNELS, 64, 64) and set(edges.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(r[:, 3:], edges) and edges.sum() > 0


def test_removal_per_sample_noise_level_and_range(tiny_models):
    alphas = tiny_models.sd().scheduler().alphas_cumprod
    x = torch.zeros(2, 3, 8, 8)
    out = removal_image(x + 0.5, torch.ones(1, 1, 8, 8), torch.tensor([0, MAX_NOISE]), torch.ones(2, 3, 8, 8), alphas)
    assert torch.allclose(out[0], torch.full((3, 8, 8), 0.5)) and not torch.allclose(out[1], out[0])
    with pytest.raises(ValueError, match="between 0 and 1000"):
        removal_image(x, torch.ones(1, 1, 8, 8), MAX_NOISE + 1, x, alphas)


# -- the training-free mode ------------------------------------------------------------------------
def test_training_free_latents_keep_the_input_outside_the_roi(tiny_models):
    sd = tiny_models.sd()
    sched = sd.scheduler()
    image = _picture(2)
    z0 = S.encode_image(sd, image)
    z_removal = S.encode_image(sd, _picture(3))
    m = to_latent(np.asarray(_left_half(), np.float32) / 255, *z0.shape[-2:])
    outside, inside = (m == 0).expand_as(z0), (m == 1).expand_as(z0)
    assert outside.any() and inside.any()
    noise = S.randn(z0.shape, S.make_generator(0, "cpu"), "cpu", z0.dtype)
    cond, uncond = S.encode_prompts(sd, ["a red square"]), S.encode_prompts(sd, [""])
    edges = edge_tensor(image).expand(-1, 3, -1, -1)
    log = iir_net.RunLog()
    with torch.no_grad():
        z = iir_net.training_free_latents(sd, sched, tiny_models.get("controlnet_canny"), edges, z0, z_removal, m,
                                          cond, uncond, 10, 0.7, 9.0, noise, log)
    assert torch.equal(z[outside], z0[outside])
    assert not torch.allclose(z[inside], z0[inside], atol=1e-2)
    assert log.counter.forward == 7  # round(0.7 * 10) ControlNet+UNet steps


def test_whole_image_roi_skips_the_photos_encode_and_changes_nothing(tiny_models, monkeypatch):
    """A RoI of the whole image keeps no background: run encodes only the removal image, and the
    latents equal those of the blended path with the photo's latents and an all-ones mask."""
    sd = tiny_models.sd()
    encoded = []
    encode = sd.vae.encode
    monkeypatch.setattr(sd.vae, "encode", lambda x, *a, **k: encoded.append(x.shape) or encode(x, *a, **k))
    _run(tiny_models, mask=None, whole_image=True, steps=10)
    assert len(encoded) == 1
    encoded.clear()
    _run(tiny_models, steps=10)  # the left half: the photo's latents are kept outside it
    assert len(encoded) == 2
    monkeypatch.undo()

    sched = sd.scheduler()
    z0, z_removal = S.encode_image(sd, _picture(2)), S.encode_image(sd, _picture(3))
    ones = torch.ones((1, 1) + tuple(z0.shape[-2:]))
    noise = S.randn(z0.shape, S.make_generator(0, "cpu"), "cpu", z0.dtype)
    cond, uncond = S.encode_prompts(sd, ["a red square"]), S.encode_prompts(sd, [""])
    edges = edge_tensor(_picture(2)).expand(-1, 3, -1, -1)
    with torch.no_grad():
        kept, skipped = (iir_net.training_free_latents(sd, sched, tiny_models.get("controlnet_canny"), edges, z,
                                                       z_removal, ones, cond, uncond, 10, 0.7, 9.0, noise,
                                                       iir_net.RunLog()) for z in (z0, None))
    assert torch.equal(kept, skipped)


def test_training_free_run_contract_and_seeds(tiny_models):
    unet, canny = tiny_models.sd().unet, tiny_models.get("controlnet_canny")
    before = (_digest(unet), _digest(canny))
    seen = []
    a = iir_net.run(iir_net.IIRNetInputs(image=_picture(), prompt="a green square", mask=_left_half(), steps=10,
                                         noise=500, seed=1, resolution=64), tiny_models, on_step=seen.append)
    b = _run(tiny_models, steps=10, noise=500, seed=1)
    c = _run(tiny_models, steps=10, noise=500, seed=2)
    assert a.params["mode"] == "training-free" and any("training-free" in n for n in a.notes)
    assert a.params["roi_source"] == "mask" and a.params["strength"] == pytest.approx(0.8)
    assert a.unet_evals == {"forward": 8, "backward": 0} and [s.i for s in seen] == list(range(1, 9))
    assert set(a.intermediates) == {"roi", "removal", "edges"} and a.image.size == (64, 64)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))
    photo = np.asarray(iir_net.load_image(_picture(), 64), np.int16)
    removal = np.asarray(a.intermediates["removal"], np.int16)
    assert np.array_equal(removal[:, 32:], photo[:, 32:])  # outside the RoI: the input
    assert (_digest(unet), _digest(canny)) == before  # no cached model was changed


def test_grounded_sam_roi_from_the_prompts_noun(photo, tiny_models, monkeypatch):
    res = iir_net.run(iir_net.IIRNetInputs(image=photo, prompt="a green cat", steps=2, resolution=128), tiny_models)
    assert res.params["roi_source"] == "grounded-sam" and res.params["roi_text"] == "cat"
    res = iir_net.run(iir_net.IIRNetInputs(image=photo, prompt="a green cat", roi_text="dog", steps=2,
                                           resolution=128), tiny_models)
    assert res.params["roi_text"] == "dog"

    from engine.core import segment

    monkeypatch.setattr(segment, "grounded_sam", lambda g, s, image, phrase, **kw: segment.SegmentResult(
        np.zeros((image.height, image.width), np.float32), [], "nothing"))
    with pytest.raises(ValueError, match="found nothing matching 'cat'.*draw the mask"):
        iir_net.run(iir_net.IIRNetInputs(image=photo, prompt="a green cat", steps=2, resolution=128), tiny_models)


@pytest.mark.parametrize("change, message", [
    (dict(noise=-1), "noise level must be between 0 and 1000"),
    (dict(noise=MAX_NOISE + 1), "noise level must be between 0 and 1000"),
    (dict(noise=2.5), "noise level must be a whole number"),
    (dict(canny_low=200, canny_high=100), "must not exceed"),
    (dict(steps=0), "steps"), (dict(cfg=100.0), "CFG"),
    (dict(mask=None, prompt="sunset, golden hour"), "names no object.*draw a mask"),
    (dict(mask=Image.new("L", (64, 64), 0)), "mask is empty"),
    (dict(whole_image="yes"), "whole_image must be true or false"),
])
def test_bad_input_is_refused(tiny_models, change, message):
    with pytest.raises(ValueError, match=message):
        _run(tiny_models, **change)


# -- checkpoints -------------------------------------------------------------------------------------
def _controlnet_folder(tiny_models, folder, channels=4, safe=True):
    from diffusers import ControlNetModel

    ControlNetModel.from_unet(tiny_models.sd().unet, conditioning_channels=channels).save_pretrained(
        folder, safe_serialization=safe)
    return folder


def test_bad_checkpoints_are_refused(tiny_models, tmp_path):
    three = _controlnet_folder(tiny_models, tmp_path / "three", channels=3)
    pickle = _controlnet_folder(tiny_models, tmp_path / "pickle", safe=False)
    no_weights = _controlnet_folder(tiny_models, tmp_path / "noweights")
    (no_weights / "diffusion_pytorch_model.safetensors").unlink()
    no_config = _controlnet_folder(tiny_models, tmp_path / "noconfig")
    (no_config / "config.json").unlink()
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really")
    cases = [(three, "3 conditioning channels.*reads 4"), (pickle, "pickle weights.*safetensors only"),
             (no_weights, "safetensors is missing"), (no_config, "config.json is missing"),
             (ckpt, "pickle file"), (tmp_path / "nowhere", "no checkpoint folder"),
             ("someone/iir-net", "could not load the IIR-Net checkpoint from the hub id")]
    for checkpoint, message in cases:
        with pytest.raises(ValueError, match=message):
            _run(tiny_models, checkpoint=str(checkpoint))


# -- training (Eq. 8) and the trained mode -------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("iir_data")
    for i, caption in enumerate(["a red cat", "a blue car on the road", "sunset over the sea", "a green tree"]):
        _picture(10 + i).save(folder / f"img{i}.png")
        (folder / f"img{i}.txt").write_text(caption)
    return folder


def _train_args(data, out, *extra):
    return ["--data", str(data), "--out", str(out), "--steps", "20", "--batch", "2", "--lr", "3e-3",
            "--resolution", "64", "--profile", "tiny", "--eval-every", "5", "--save-every", "10", "--quiet", *extra]


@pytest.fixture(scope="module")
def trained(tiny_models, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("iir_ckpt")
    sd = tiny_models.sd()
    before = [_digest(m) for m in (sd.unet, sd.vae, sd.text_encoder)]
    assert trainer.main(_train_args(data_dir, out), models=tiny_models) == 0
    after = [_digest(m) for m in (sd.unet, sd.vae, sd.text_encoder)]
    return out, before, after


def test_training_lowers_the_loss_and_writes_safetensors(trained):
    out, before, after = trained
    assert before == after  # the UNet, VAE and text encoder were never written to
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["finished"] and state["step"] == 20 and len(state["loss"]) == 20
    evals = [v for _, v in state["eval_loss"]]
    assert [s for s, _ in state["eval_loss"]] == [0, 5, 10, 15, 20]
    assert evals[-1] < 0.95 * evals[0]  # the same fixed batch (images, k, t, noise) at each check
    assert np.mean(state["loss"][-5:]) < np.mean(state["loss"][:5])
    config = json.loads((out / "config.json").read_text())
    assert config["conditioning_channels"] == 4 and config["_class_name"] == "ControlNetModel"
    assert (out / "diffusion_pytorch_model.safetensors").is_file()
    # the weights users load are safetensors; pickles only in accelerate's resume state (optimizer,
    # RNG), which accelerate reads back with torch.load(weights_only=True)
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".ckpt", ".pth", ".pkl")
                and trainer.CHECKPOINTS not in p.relative_to(out).parts]
    assert (out / trainer.CHECKPOINTS / "checkpoint-000020" / "model.safetensors").is_file()
    assert sum(state["rois"].values()) == 4


def test_trained_checkpoint_runs_in_trained_mode(trained, tiny_models, tmp_path, monkeypatch, capsys):
    out = trained[0]
    from diffusers import ControlNetModel

    clear_cache()
    res = _run(tiny_models, checkpoint=str(out), noise=100)
    assert res.params["mode"] == "trained" and res.unet_evals["forward"] == 4 and "strength" not in res.params
    saved = ControlNetModel.from_pretrained(out)
    from engine.core.iir_checkpoint import _CACHE
    loaded = next(iter(_CACHE.values()))
    assert _digest(loaded) == _digest(saved) and not any(p.requires_grad for p in loaded.parameters())
    # ... and from the CLI, which reports the mode; the default checkpoint comes from the environment.
    from engine.__main__ import main

    _picture().save(tmp_path / "in.png")
    _left_half().save(tmp_path / "mask.png")
    monkeypatch.setenv("DES_CACHE_DIR", str(tiny_models.cache_dir))
    monkeypatch.setenv("DES_IIR_CHECKPOINT", str(out))
    code = main(["iir-net", "--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "run"), "--prompt",
                 "a green square", "--mask", str(tmp_path / "mask.png"), "--noise", "300", "--steps", "3",
                 "--profile", "tiny", "--resolution", "64", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["params"]["mode"] == "trained" and report["params"]["noise"] == 300
    assert set(report["intermediates"]) == {"roi", "removal", "edges"}
    assert all((tmp_path / "run" / f).is_file() for f in report["intermediates"].values())
    code = main(["iir-net", "--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "free"), "--prompt",
                 "sunset", "--whole-image", "--checkpoint", " ", "--steps", "2", "--profile", "tiny",
                 "--resolution", "64", "--device", "cpu"])
    assert code == 0 and json.loads((tmp_path / "free" / "report.json").read_text())["params"]["mode"] == "trained"


def test_resume_continues_exactly_and_finished_runs_are_kept(trained, tiny_models, data_dir, tmp_path,
                                                            monkeypatch, capsys):
    out = tmp_path / "resumed"
    real_save = trainer.save

    def interrupted(*args, **kw):
        real_save(*args, **kw)
        if args[3] == 10:  # step
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.main(_train_args(data_dir, out), models=tiny_models)
    monkeypatch.setattr(trainer, "save", real_save)
    assert trainer.main(_train_args(data_dir, out), models=tiny_models) == 2
    assert "--resume" in capsys.readouterr().err
    assert trainer.main(_train_args(data_dir, out, "--resume"), models=tiny_models) == 0
    a, b = json.loads((out / "trainer_state.json").read_text()), json.loads((trained[0] / "trainer_state.json").read_text())
    assert a["loss"] == b["loss"]  # the same batches, k, t and noise as the uninterrupted run
    from safetensors.torch import load_file

    wa, wb = load_file(out / "diffusion_pytorch_model.safetensors"), load_file(trained[0] / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wb)
    stamp = (out / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    for extra in ((), ("--resume",)):
        assert trainer.main(_train_args(data_dir, out, *extra), models=tiny_models) == 2
        assert "already holds a finished" in capsys.readouterr().err
    assert (out / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp


def test_bad_training_data_exits_2(tmp_path, data_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    uncaptioned = tmp_path / "uncaptioned"
    uncaptioned.mkdir()
    _picture().save(uncaptioned / "a.png")
    meta = tmp_path / "meta"
    meta.mkdir()
    (meta / "metadata.jsonl").write_text(json.dumps({"file_name": "missing.png", "text": "a cat"}) + "\n")
    for data, message in [(empty, "holds no images"), (uncaptioned, "have no caption: a.png"),
                          (meta, "no image missing.png"), (tmp_path / "nope", None)]:
        code = trainer.main(["--data", str(data), "--out", str(tmp_path / "o"), "--profile", "tiny"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error:") and (message is None or message in err)
    assert trainer.main(["--data", str(data_dir), "--out", str(tmp_path / "o"), "--steps", "0"]) == 2
    # A dataset name without the datasets library (not a dependency): say how to install it.
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
        assert trainer.main(["--data", "someone/captions", "--out", str(tmp_path / "o")]) == 2
    assert "pip install datasets" in capsys.readouterr().err

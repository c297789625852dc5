"""ITO (papers/ito.txt; METHODS.md section 2) on tiny random models: the ITO update (Eq. 4-6),
the edit mask (Eq. 7), the guidance pass, model safety, bad input and the CLI contract."""
from __future__ import annotations

import json
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from engine.core import conditions as K
from engine.core import ito_inputs as I
from engine.core import sampling as S
from engine.core.inversion import ddim_invert
from engine.core.ito_mask import binarize_difference, estimate_edit_mask, noise_difference
from engine.core.ito_optim import guidance_loss, ito_decode, ito_update
from engine.methods import ito

FAST = dict(steps=4, t_u=3, mask_seeds=2, resolution=64, caption="a cat on grass")


def _photo(size: int = 64) -> Image.Image:
    img = Image.new("RGB", (size, size), (90, 120, 160))
    d = ImageDraw.Draw(img)
    d.ellipse((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=(220, 180, 140))
    d.rectangle((0, 3 * size // 4, size, size), fill=(60, 140, 60))
    return img


@pytest.fixture(scope="module")
def photo64():
    return _photo(64)


def _moved_pose(pose: K.Pose, dx: float = 8.0) -> K.Pose:
    person = list(pose.people[0])
    x, y, c = person[4]  # RWrist
    person[4] = (min(pose.width - 1, x + dx), max(0.0, y - dx), c)
    return K.Pose(pose.width, pose.height, (tuple(person),))


@contextmanager
def unet_calls(unet):
    """Batch sizes of every UNet forward (a hook, removed afterwards)."""
    sizes = []
    handle = unet.register_forward_pre_hook(lambda mod, args: sizes.append(args[0].shape[0]))
    try:
        yield sizes
    finally:
        handle.remove()


def _setup(models, photo, prompts=("a cat", "a cat")):
    sd = models.sd()
    sched = sd.scheduler()
    x0 = S.encode_image(sd, photo).float()
    c0, ce, un = S.encode_prompts(sd, [*prompts, ""]).chunk(3)
    return sd, sched, x0, c0, ce, un


def _control(models, picture):
    return S.Control([models.get("controlnet_scribble")], [I.control_tensor(picture, "cpu", torch.float32)], [1.0])


# -- the ITO update (Eq. 4-6) ---------------------------------------------------------------------------
def test_update_moves_towards_x_outside_the_mask_and_not_inside():
    g = torch.Generator().manual_seed(0)
    y, x = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    zero_mask_keep = torch.ones(1, 1, 8, 8)
    y1, losses = ito_update(y, x, None, zero_mask_keep, lam=1.0, k=3, lr=0.1)
    assert (y1 - x).norm() < (y - x).norm() - 0.1 and "guidance" not in losses
    # Inside the edit mask (m = 1) the preservation loss has no gradient: Adam leaves y alone there.
    keep = torch.ones(1, 1, 8, 8)
    keep[..., :4, :] = 0
    y2, _ = ito_update(y, x, None, keep, lam=1.0, k=3, lr=0.1)
    assert torch.equal(y2[..., :4, :], y[..., :4, :]) and not torch.equal(y2[..., 4:, :], y[..., 4:, :])
    # lambda = 0: guidance only, the cosine loss falls.
    gt = torch.randn(1, 4, 8, 8, generator=g)
    y3, _ = ito_update(y, x, gt, keep, lam=0.0, k=5, lr=0.1)
    assert guidance_loss(y3, gt) < guidance_loss(y, gt)


def test_zero_mask_lambda_one_keeps_the_latents_closer_to_x_t(tiny_models, photo64):
    """METHODS.md: with an all-zero mask and lambda = 1 the latents stay closer to x_t than without
    the update. Starts from SDEdit noise so the plain trajectory wanders away from x_t."""
    sd, sched, x0, c0, ce, un = _setup(tiny_models, photo64)
    steps = 6
    ts = S.sdedit_timesteps(sched, steps, 1.0)
    counter = S.UNetCounter()
    traj = ddim_invert(sd, sched, x0, c0, steps, counter)
    targets = [traj[steps - i] for i in range(steps)]
    start = S.add_noise(sched, x0, torch.randn(x0.shape, generator=torch.Generator().manual_seed(3)), ts[0])
    keep = torch.ones(1, 1, *x0.shape[-2:])  # all-zero edit mask

    def distances(t_u):
        seen = []
        y = start.clone()
        for i, t in enumerate(ts):  # the same loop as ito_decode, one step at a time, to watch y_t
            y = ito_decode(sd.unet, sched, y, ts[i:i + 1], ce, un, 7.5, None, counter, targets[i:i + 1], keep,
                           1.0, 1 if i < t_u else 0, 1, 0.1)
            seen.append(float((y - (targets[i + 1] if i + 1 < steps else x0)).norm()))
        return seen

    free, pulled = distances(0), distances(steps)
    assert sum(pulled) < 0.9 * sum(free)
    assert pulled[-1] < free[-1]


def test_optimisation_needs_no_model_gradient_and_leaves_weights_untouched(tiny_models, photo64):
    sd = tiny_models.sd()
    nets = {"unet": sd.unet, "vae": sd.vae, "text": sd.text_encoder,
            "scribble": tiny_models.get("controlnet_scribble"), "pose": tiny_models.get("controlnet_openpose")}
    before = {name: {k: v.clone() for k, v in m.state_dict().items()} for name, m in nets.items()}
    scribble = K.scribble_from_edges(photo64)
    ImageDraw.Draw(scribble).line((5, 5, 40, 20), fill=(255, 255, 255), width=3)
    pose = K.default_pose(64, 64)
    # conv_in runs at every ControlNet step, whether the model's forward or the studio's block-by-block
    # one (engine/core/controlnet_features.py) makes it
    with unet_calls(nets["scribble"].conv_in) as s_calls, unet_calls(nets["pose"].conv_in) as p_calls:
        res = ito.run(ito.ITOInputs(image=photo64, prompt="a dog on grass", scribble=scribble,
                                    pose=_moved_pose(pose), **FAST), tiny_models)
    assert res.unet_evals["backward"] == 0 and res.params["optimised"].startswith("latents only")
    assert len(s_calls) == len(p_calls) == res.unet_evals["forward"]  # multi-ControlNet: both every step
    for name, m in nets.items():
        assert all(torch.equal(v, m.state_dict()[k]) for k, v in before[name].items()), name
        assert not any(p.requires_grad or p.grad is not None for p in m.parameters()), name
    assert res.params["conditions"] == ["text", "scribble", "pose"]
    assert any("default standing skeleton" in n for n in res.notes)
    assert any("edge-based fallback" in n for n in res.notes)
    assert res.curves["edit preservation"] and res.curves["edit guidance"]


# -- the mask (Eq. 7) --------------------------------------------------------------------------------------
def test_mask_is_one_batched_unet_call_per_step_and_matches_per_seed_runs(tiny_models, photo64, monkeypatch):
    """Eq. 7's n seeds x {C_0, C_EDIT} run as one batch per step, equal to separate one-seed runs.

    The conditions differ in text as well as scribble: the tiny random ControlNet moves eps by ~1e-5
    of its size for a scribble change, the same order as batched-vs-single float rounding, so a
    scribble-only difference cannot show the averaging (it failed at atol 1e-9 on 1e-6 values).
    With the text change the map is ~0.1 and the comparison is relative to it. That the condition
    images line up with their text in the batch is checked row by row on the ControlNet's inputs."""
    sd, sched, x0, c0, ce, un = _setup(tiny_models, photo64, prompts=("a cat", "a red sports car"))
    src = K.scribble_from_edges(photo64)
    edit = src.copy()
    ImageDraw.Draw(edit).rectangle((0, 0, 20, 20), fill=(255, 255, 255))
    ctl0, ctle = _control(tiny_models, src), _control(tiny_models, edit)
    ts = S.sdedit_timesteps(sched, 3, 1.0)
    noises = torch.randn((10, 4, 8, 8), generator=torch.Generator().manual_seed(0))
    counter = S.UNetCounter()
    seen = []
    net = tiny_models.get("controlnet_scribble")
    monkeypatch.setattr(S, "supports_features", lambda model: False)  # whole ControlNets, as whole_controlnets()
    hook = net.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw["controlnet_cond"].clone(), kw["encoder_hidden_states"].clone())),
        with_kwargs=True)
    try:
        with unet_calls(sd.unet) as sizes:
            mask, soft = estimate_edit_mask(sd.unet, sched, x0, noises, ts, c0, ce, un, 7.5, ctl0, ctle, counter)
    finally:
        hook.remove()
    assert counter.forward == len(ts) == len(sizes) == len(seen) == 3
    assert sizes == [4 * 10] * 3  # n seeds x {C_0, C_EDIT} x {uncond, cond} in one call
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    img0, imge = ctl0.images[0][0], ctle.images[0][0]
    for image, emb in seen:  # rows: [uncond: C_0 x n, C_EDIT x n; cond: C_0 x n, C_EDIT x n]
        for half in (0, 20):
            assert all(torch.equal(image[half + i], img0) and torch.equal(image[half + 10 + i], imge)
                       for i in range(10))
        assert all(torch.equal(emb[20 + i], c0[0]) and torch.equal(emb[30 + i], ce[0]) for i in range(10))
    # The batched average equals the average of separate one-seed runs.
    both, _ = noise_difference(sd.unet, sched, x0, noises[:2], ts, c0, ce, un, 7.5, ctl0, ctle, counter)
    one = [noise_difference(sd.unet, sched, x0, noises[i:i + 1], ts, c0, ce, un, 7.5, ctl0, ctle, counter)[0]
           for i in range(2)]
    mean = (one[0] + one[1]) / 2
    assert float(mean.min()) > 1e-3 and not torch.allclose(one[0], one[1], rtol=0.05)  # a real, seed-dependent map
    assert torch.allclose(both, mean, rtol=1e-4, atol=1e-5 * float(mean.max()))
    swapped, _ = noise_difference(sd.unet, sched, x0, noises[:1], ts, c0, c0, un, 7.5, ctl0, ctl0, counter)
    assert float(swapped.max()) == 0.0 and float(one[0].max()) > 0


def test_identical_conditions_give_an_empty_mask(tiny_models, photo64):
    sd, sched, x0, c0, _, un = _setup(tiny_models, photo64)
    src = K.scribble_from_edges(photo64)
    ts = S.sdedit_timesteps(sched, 2, 1.0)
    noises = torch.randn((3, 4, 8, 8), generator=torch.Generator().manual_seed(1))
    mask, _ = estimate_edit_mask(sd.unet, sched, x0, noises, ts, c0, c0, un, 7.5, _control(tiny_models, src),
                                 _control(tiny_models, src), S.UNetCounter())
    assert float(mask.sum()) == 0.0
    # Text-only, identical prompts: empty too; a different prompt is not.
    mask_t, _ = estimate_edit_mask(sd.unet, sched, x0, noises, ts, c0, c0, un, 7.5, None, None, S.UNetCounter())
    other = S.encode_prompts(sd, ["a red sports car"])
    mask_o, _ = estimate_edit_mask(sd.unet, sched, x0, noises, ts, c0, other, un, 7.5, None, None, S.UNetCounter())
    assert float(mask_t.sum()) == 0.0 and float(mask_o.sum()) > 0


def test_mask_grows_with_the_scribble_change(tiny_models):
    """A small scribble change (one corner) gives a smaller, corner-weighted mask than a large one.
    At 128 px (16x16 latents). Random tiny models spread any change over the whole image through
    self-attention, so the map has a floor everywhere; tau = 0.5 separates the peak from it."""
    photo = _photo(128)
    sd, sched, x0, c0, _, un = _setup(tiny_models, photo)
    src = K.scribble_from_edges(photo)
    small, large = src.copy(), src.copy()
    ImageDraw.Draw(small).rectangle((0, 0, 32, 32), fill=(255, 255, 255))
    ImageDraw.Draw(large).rectangle((0, 0, 128, 128), fill=(255, 255, 255))
    ts = S.sdedit_timesteps(sched, 2, 1.0)
    noises = torch.randn((4, 4, 16, 16), generator=torch.Generator().manual_seed(0))
    masks = {}
    for name, edit in (("small", small), ("large", large)):
        masks[name] = estimate_edit_mask(sd.unet, sched, x0, noises, ts, c0, c0, un, 7.5, _control(tiny_models, src),
                                         _control(tiny_models, edit), S.UNetCounter(), tau=0.5)
    (m_small, soft_small), (m_large, _) = masks["small"], masks["large"]
    assert set(torch.unique(m_small).tolist()) <= {0.0, 1.0}
    assert float(m_small.mean()) + 0.15 < float(m_large.mean())
    assert float(soft_small[..., :8, :8].mean()) > float(soft_small[..., 8:, 8:].mean())


def test_binarize_normalises_and_thresholds():
    diff = torch.zeros(1, 1, 8, 8)
    diff[..., 2:4, 2:4] = 1.0
    mask, soft = binarize_difference(diff, tau=0.1, sigma=0.0)
    assert float(soft.max()) == 1.0 and torch.equal(mask, diff)
    tiny, _ = binarize_difference(diff * 1e-9, tau=0.1, sigma=1.0, eps_scale=1.0)  # rounding noise: empty
    assert float(tiny.sum()) == 0.0


# -- the whole run ----------------------------------------------------------------------------------------
def test_lambda_one_runs_no_guidance_pass(tiny_models, photo64):
    pose = _moved_pose(K.default_pose(64, 64))
    with unet_calls(tiny_models.sd().unet) as calls:
        only = ito.run(ito.ITOInputs(image=photo64, pose=pose, lam=1.0, **FAST), tiny_models)
    full = ito.run(ito.ITOInputs(image=photo64, pose=pose, lam=0.6, **FAST), tiny_models)
    n, n_mask = 4, 2  # decoding steps at encoding ratio 1; mask steps at DiffEdit's mask ratio 0.5
    # inversion (batch 1), mask (n seeds x {C_0, C_EDIT} x {uncond, cond}), edit (CFG pair)
    assert calls == [1] * n + [4 * FAST["mask_seeds"]] * n_mask + [2] * n
    assert only.unet_evals == {"forward": 2 * n + n_mask, "backward": 0} == {"forward": len(calls), "backward": 0}
    assert full.unet_evals["forward"] == 4 * n + n_mask  # + guidance decoding + its inversion
    assert (only.params["mask_steps"], only.params["mask_encode_ratio"]) == (n_mask, 0.5)
    assert "guidance" not in only.intermediates and "guidance" in full.intermediates
    assert not any(key.startswith("guidance") for key in only.curves)
    assert set(only.intermediates) == {"mask", "condition_source", "condition_edit"}
    assert only.image.size == photo64.size and only.params["guidance_pass"] is False


def test_same_seed_same_edit_and_user_mask_modes(tiny_models, photo64):
    kw = dict(image=photo64, prompt="a dog on grass", lam=1.0, **FAST)
    a = ito.run(ito.ITOInputs(seed=4, **kw), tiny_models)
    b = ito.run(ito.ITOInputs(seed=4, **kw), tiny_models)
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    user = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(user).rectangle((0, 0, 31, 63), fill=255)
    rep = ito.run(ito.ITOInputs(mask=user, mask_mode="replace", **kw), tiny_models)
    mask = np.asarray(rep.intermediates["mask"]) > 127
    assert mask[:, :32].all() and not mask[:, 32:].any()
    assert rep.unet_evals["forward"] == 2 * 4 and rep.params["mask_steps"] == 0  # no mask estimation pass
    add = ito.run(ito.ITOInputs(mask=user, mask_mode="add", tau=0.99, **kw), tiny_models)
    assert (np.asarray(add.intermediates["mask"]) > 127)[:, :32].all() and add.unet_evals["forward"] == 2 * 4 + 2
    assert set(np.unique(np.asarray(a.intermediates["mask"]))) <= {0, 255}


# -- bad input ---------------------------------------------------------------------------------------------
class _NobodyDetector:
    def detect_poses(self, rgb):
        return []


class _Sd15WithoutPeople:
    """Enough of a ModelCache for the condition checks: sd15 profile, OpenPose finds nobody."""

    profile = "sd15"

    def get(self, name):
        assert name == "annotators"
        return K.Annotators(hed=None, openpose=_NobodyDetector(), errors={})


def test_bad_inputs_are_readable_value_errors(tiny_models, photo64):
    pose = K.pose_to_json(K.default_pose(64, 64))
    short = {"canvas_width": 64, "canvas_height": 64, "people": [{"pose_keypoints_2d": [10, 10, 1] * 17}]}
    outside = json.loads(json.dumps(pose))
    outside["people"][0]["pose_keypoints_2d"][12:14] = [200, 30]  # RWrist far right of the canvas
    cases = [
        (dict(pose=short), "51 keypoint numbers"),
        (dict(pose=outside), "outside the 64x64 canvas"),
        (dict(scribble=Image.new("RGB", (64, 40))), "scribble is 64x40"),
        (dict(pose=pose), "no condition changed.*pose is unchanged"),  # tiny: source = default pose
        (dict(prompt="A cat  on grass"), "no condition changed.*prompt equals the caption"),
        (dict(scribble=K.scribble_from_edges(photo64)), "no condition changed.*scribble is unchanged"),
        (dict(), "nothing to edit"),
        (dict(prompt="a dog", lam=1.5), "lambda must be between 0 and 1"),
        (dict(prompt="a dog", mask_mode="xor"), "mask mode"),
        (dict(prompt="a dog", mask=Image.new("L", (64, 64), 0)), "mask is empty"),
        (dict(prompt="a dog", t_u=9), "t_u"),
        (dict(prompt="a dog", mask_encode_ratio=0.0), "mask encoding ratio must be between 0.05 and 1"),
    ]
    for kw, message in cases:
        with pytest.raises(ValueError, match=message):
            ito.run(ito.ITOInputs(**{**dict(image=photo64, **FAST), **kw}), tiny_models)
    with pytest.raises(ValueError, match="found nobody"):
        ito.run(ito.ITOInputs(image=photo64, pose=pose, **FAST), _Sd15WithoutPeople())


def test_sd15_without_annotator_weights_falls_back_with_notes(tmp_path, photo64):
    """ModelCache loads the annotators as loader(source, device, dtype); missing weights are a note."""
    from engine.models import ModelCache

    models = ModelCache("sd15", device="cpu", cache_dir=tmp_path, overrides={"annotators": str(tmp_path)})
    scribble, note = I.source_scribble(models, photo64)
    assert scribble.size == photo64.size and "HED weights are missing" in note and "edge-based" in note
    pose, note, detected = I.source_pose(models, photo64)
    assert pose == K.default_pose(64, 64) and not detected and "OpenPose weights are missing" in note


def test_prepare_gives_the_photo_conditions(tiny_models, photo64):
    p = ito.prepare(tiny_models, photo64, 64)
    assert p.scribble.size == photo64.size and p.pose.size == photo64.size and p.caption
    assert any("default standing skeleton" in n for n in p.notes)
    layer = I.stroke_layer(p.scribble)
    assert layer.mode == "RGBA"
    assert I.read_scribble(layer, photo64.size).tobytes() == p.scribble.tobytes()  # canvas layer round-trips


# -- command line ---------------------------------------------------------------------------------------------
def test_cli_writes_the_contract(tiny_models, model_dir, tmp_path, monkeypatch, photo64):
    from engine.__main__ import main

    monkeypatch.setenv("DES_CACHE_DIR", str(model_dir))
    photo64.save(tmp_path / "in.png")
    pose = K.default_pose(64, 64)
    (tmp_path / "orig.json").write_text(json.dumps(K.pose_to_json(pose)))
    (tmp_path / "edit.json").write_text(json.dumps(K.pose_to_json(_moved_pose(pose))))
    out = tmp_path / "out"
    code = main(["ito", "--image", str(tmp_path / "in.png"), "--out", str(out), "--profile", "tiny",
                 "--resolution", "64", "--pose", str(tmp_path / "edit.json"),
                 "--pose-source", str(tmp_path / "orig.json"), "--caption", "a cat", "--prompt", "a dog",
                 "--steps", "4", "--tu", "2", "--k", "2", "--lr", "0.05", "--lam", "0.5", "--tau", "0.2",
                 "--mask-seeds", "2", "--encode-ratio", "0.5", "--mask-encode-ratio", "1", "--cfg", "5"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    # 2 decoding steps for inversion, guidance, its inversion and the edit; 4 mask steps (ratio 1)
    assert report["method"] == "ito" and report["unet_evals"] == {"forward": 4 * 2 + 4, "backward": 0}
    assert set(report["intermediates"]) == {"mask", "guidance", "condition_source", "condition_edit"}
    for name in ["edited.png", *report["intermediates"].values()]:
        assert Image.open(out / name).size[0] >= 64
    p = report["params"]
    assert (p["lam"], p["t_u"], p["k"], p["lr"], p["tau"], p["mask_seeds"], p["cfg"], p["decoding_steps"],
            p["mask_encode_ratio"], p["mask_steps"]) == (0.5, 2, 2, 0.05, 0.2, 2, 5.0, 2, 1.0, 4)
    (tmp_path / "bad.json").write_text(json.dumps({"canvas_width": 64, "canvas_height": 64, "people": [
        {"pose_keypoints_2d": [100, 10, 1] + [0, 0, 0] * 17}]}))
    assert main(["ito", "--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "o2"), "--profile", "tiny",
                 "--resolution", "64", "--pose", str(tmp_path / "bad.json"), "--caption", "a cat"]) == 2

"""Issue 18's ControlNet waste, removed: the condition image's features E(c) (the ControlNet's
conditioning embedding on the full-resolution image) are computed once per edit, not at every step
for every sample of the CFG batch, and the residuals equal the model's own forward
(engine/core/controlnet_features.py). Checked on the helper and through IIR-Net's and ITO's run."""
import copy
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import ImageDraw

from engine.core import conditions as K
from engine.core import controlnet_features as CF
from engine.core import sampling as S
from engine.methods import iir_net, ito
from tests.test_ito import unet_calls


def _inputs(net, t_batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t_batch, 4, 16, 16, generator=g)
    emb = torch.randn(t_batch, 77, net.config.cross_attention_dim, generator=g)
    image = torch.rand(1, net.config.conditioning_channels, 128, 128, generator=g)
    image[:, 0] = 0.0  # channels differ, so a channel order ignored shows
    return x, emb, image


@pytest.mark.parametrize("timestep", [torch.tensor(501), 501], ids=["tensor", "int"])
@pytest.mark.parametrize("order", ["rgb", "bgr"])
def test_residuals_from_features_equal_the_models_forward(tiny_models, timestep, order):
    net = tiny_models.get("controlnet_canny")
    if order == "bgr":
        net = copy.deepcopy(net)
        net.register_to_config(controlnet_conditioning_channel_order="bgr")
    assert CF.supports_features(net)
    x, emb, image = _inputs(net)
    with torch.no_grad():
        want_down, want_mid = net(x, timestep, encoder_hidden_states=emb, controlnet_cond=image.expand(2, -1, -1, -1),
                                  conditioning_scale=0.7, return_dict=False)
        down, mid = CF.residuals(net, x, timestep, emb, CF.condition_features(net, image), 0.7)
    assert len(down) == len(want_down)
    for got, want in zip([*down, mid], [*want_down, want_mid]):
        assert got.shape == want.shape and want.abs().max() > 1e-4
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_models_the_shortcut_cannot_serve_use_their_own_forward(tiny_models):
    net = tiny_models.get("controlnet_canny")
    pooled = copy.deepcopy(net)
    pooled.register_to_config(global_pool_conditions=True)
    compiled = copy.deepcopy(net)
    compiled._compiled_call_impl = compiled.forward  # what nn.Module.compile() sets
    assert CF.supports_features(net)
    assert not CF.supports_features(pooled) and not CF.supports_features(compiled)


@contextmanager
def whole_controlnets():
    """Every ControlNet called whole (its own forward, E(c) at every call), for the tests that read the
    condition image each call receives (C_0 / C_EDIT routing in ITO, R(x0) and C(x0) in IIR-Net). The
    shortcut gives the same edits: the tests below."""
    with mock.patch.object(S, "supports_features", lambda model: False):
        yield


def _both_ways(run):
    """(the run with the shortcut, the run with every ControlNet called whole)."""
    fast = run()
    with whole_controlnets():
        slow = run()
    return fast, slow


def test_iir_net_computes_the_condition_features_once_per_edit_and_gives_the_same_edit(tiny_models, photo):
    net = tiny_models.get("controlnet_canny")
    inputs = iir_net.IIRNetInputs(image=photo, prompt="a white cat", whole_image=True, noise=0, steps=6,
                                  cfg=9.0, resolution=128)
    with unet_calls(net.controlnet_cond_embedding) as features, unet_calls(net.conv_in) as steps:
        fast = iir_net.run(inputs, tiny_models)
    assert len(steps) == fast.unet_evals["forward"] >= 3 and steps[0] == 2  # CFG: both halves each step
    assert features == [1]  # E(c) once, at the image's batch of 1
    fast, slow = _both_ways(lambda: iir_net.run(inputs, tiny_models))
    a, b = (np.asarray(r.images[0], dtype=np.int16) for r in (fast, slow))
    assert np.abs(a - b).max() <= 1


def test_ito_with_scribble_and_pose_gives_the_same_edit_with_features_reused(tiny_models, photo):
    photo64 = photo.resize((64, 64))
    scribble = K.scribble_from_edges(photo64)
    ImageDraw.Draw(scribble).line((5, 5, 40, 20), fill=(255, 255, 255), width=3)
    pose = K.default_pose(64, 64)
    person = list(pose.people[0])
    x, y, c = person[4]
    person[4] = (min(pose.width - 1, x + 8.0), max(0.0, y - 8.0), c)  # the right wrist raised
    moved = K.Pose(pose.width, pose.height, (tuple(person),))
    inputs = ito.ITOInputs(image=photo64, prompt="a dog on grass", scribble=scribble, pose=moved, steps=4, t_u=2,
                           mask_seeds=2, resolution=64)
    net = tiny_models.get("controlnet_scribble")
    with unet_calls(net.controlnet_cond_embedding) as features, unet_calls(net.conv_in) as steps:
        fast, slow = _both_ways(lambda: ito.run(inputs, tiny_models))
    per_run = len(steps) // 2
    assert per_run == fast.unet_evals["forward"]
    first_run = len(features) - per_run  # the second run called E at every step; the first far less
    assert 0 < first_run <= 6, (len(features), per_run)  # a handful of Controls per edit (C_0, C_EDIT, batched)
    a, b = (np.asarray(r.images[0], dtype=np.int16) for r in (fast, slow))
    assert np.abs(a - b).max() <= 1

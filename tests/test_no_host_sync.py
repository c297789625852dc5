"""No host-device synchronisation inside a method's step loops (issue 18, the GPU fast path).

On a GPU, turning a device tensor into a Python value (float(), .item(), int(), bool(), .tolist(),
.numpy(), .cpu()) makes the host wait until every queued kernel has run, so the host cannot queue
the next step while the device works. The loops keep losses and timesteps on the device and read
them once, after the loop (engine.methods.common.to_host, engine.core.sampling.alpha_bar).

There is no GPU here, so the test counts those conversions on the CPU, per line of code, from the
first UNet call of a run to its end, through each method's `run` at the tab's tiny defaults, then
again with 6 more rounds of every loop: a line that converts once per step converts more often;
one that converts once per run (the final image, a mask between stages) does not. Two lines may
convert per step because
their tensors are always on the host, whatever the device: Adam's step count (torch keeps it on the
CPU unless `capturable`) and the autocorrelation regulariser's random offsets (drawn from the run's
CPU generator so seeds agree across devices).
"""
import collections
import traceback

import pytest
import torch

from bench.tiny_defaults import TEXTS, tab_inputs  # what a person types before pressing Edit
from engine import methods
from engine.profile_defaults import defaults

CONVERSIONS = ("item", "__float__", "__int__", "__bool__", "__index__", "tolist", "numpy", "cpu")
# Every field that sets how many times a loop runs (ITO: t_u updates of k Adam steps, n mask seeds;
# pix2pix-zero: regulariser iterations per inversion step).
LOOPS = ("steps", "embed_steps", "tune_steps", "t_u", "k", "mask_seeds", "reg_iters")
HOST_ONLY = ("torch/optim/", "engine/core/autocorr.py:draw_offsets")


def _site(stack) -> str:
    frame = stack[-1]
    path = frame.filename.replace("\\", "/")
    for root in ("site-packages/", "/engine/"):
        if root in path:
            path = ("engine/" if root == "/engine/" else "") + path.split(root, 1)[1]
    return f"{path}:{frame.name}:{frame.lineno}"


@pytest.fixture
def conversions(monkeypatch):
    """(events, window, monkeypatch): every tensor->Python conversion made while window[0] is True, by line."""
    events, window = [], [False]
    for name in CONVERSIONS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if window[0]:
                window[0] = False  # conversions inside this one are not counted twice
                try:
                    events.append(_site(traceback.extract_stack(limit=3)[:-1]))
                finally:
                    window[0] = True
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return events, window, monkeypatch


def _inputs(name, photo, more_steps=0):
    module = methods.available()[name]
    longer = {k: v + more_steps for k, v in defaults(module, "tiny").items() if k in LOOPS}
    return module, tab_inputs(module, photo, **longer)


def _count(name, photo, tiny_models, conversions, more_steps=0):
    """(conversions per line from the first UNet call to the end of the run, UNet calls, result)."""
    events, window, monkeypatch = conversions
    events.clear()
    module, inputs = _inputs(name, photo, more_steps)
    if hasattr(module, "InversionCache"):  # pix2pix-zero: both runs invert (an earlier test may have cached it)
        monkeypatch.setattr(module, "CACHE", module.InversionCache())
    calls = []

    def first_call(module_, args):
        calls.append(1)
        window[0] = True

    hook = tiny_models.get("sd").unet.register_forward_pre_hook(first_call)
    try:
        result = module.run(inputs, tiny_models)
    finally:
        hook.remove()
        window[0] = False
    lines = collections.Counter(e for e in events if not any(h in e for h in HOST_ONLY))
    return lines, len(calls), result


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_step_loops_do_not_wait_for_the_device(name, conversions, tiny_models, photo):
    """Every loop gets 6 more steps: a line that reads a device value per step reads it more often."""
    lines, calls, result = _count(name, photo, tiny_models, conversions)
    more, more_calls, _ = _count(name, photo, tiny_models, conversions, more_steps=6)
    assert more_calls > calls, (name, calls, more_calls)
    grew = {line: (lines.get(line, 0), n) for line, n in more.items() if n > lines.get(line, 0)}
    assert grew == {}, f"{name} reads device values inside its step loops (line: reads at +0, +6 steps): {grew}"
    for key, curve in (result.curves or {}).items():  # the report gets floats, read once after the loops
        assert all(type(v) is float for v in curve), (name, key)


def test_the_counter_sees_a_per_step_read(conversions, tiny_models, photo, monkeypatch):
    """The check above can fail: a float() of the loss per step (the code before issue 18) is found."""
    from engine.core import ito_optim

    for term in ("preservation_loss", "guidance_loss"):
        def read_each_time(*args, _real=getattr(ito_optim, term), **kwargs):
            loss = _real(*args, **kwargs)
            float(loss)  # the old per-step read
            return loss

        monkeypatch.setattr(ito_optim, term, read_each_time)
    lines, _, _ = _count("ito", photo, tiny_models, conversions)
    more, _, _ = _count("ito", photo, tiny_models, conversions, more_steps=6)
    grew = [line for line, n in more.items() if n > lines.get(line, 0)]
    assert any("read_each_time" in line for line in grew), grew

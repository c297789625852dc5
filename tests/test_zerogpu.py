"""ZeroGPU: with a `spaces` package that says ZeroGPU, engine calls are wrapped by spaces.GPU with a
duration computed from the request; without one nothing changes."""
import os
import sys
import types

import pytest

from engine.methods import layer_diffusion as LD
from ui import zerogpu


@pytest.fixture
def fake_spaces(monkeypatch):
    calls = []

    def GPU(duration):
        def deco(fn):
            def wrapped(*args, **kwargs):
                calls.append(duration(*args, **kwargs))
                return fn(*args, **kwargs)
            return wrapped
        return deco

    spaces = types.ModuleType("spaces")
    spaces.GPU = GPU
    config = types.ModuleType("spaces.config")
    config.Config = types.SimpleNamespace(zero_gpu=True)
    spaces.config = config
    monkeypatch.setitem(sys.modules, "spaces", spaces)
    monkeypatch.setitem(sys.modules, "spaces.config", config)
    monkeypatch.delenv("DES_CACHE_ON_CPU", raising=False)
    return calls


def test_without_spaces_nothing_is_wrapped(monkeypatch):
    monkeypatch.setitem(sys.modules, "spaces", None)  # import fails
    fn = lambda: 1  # noqa: E731
    assert not zerogpu.active()
    assert zerogpu.wrap(fn, lambda: 5) is fn


def test_on_zerogpu_calls_get_a_duration_from_the_request(fake_spaces, photo):
    from ui.runner import Runner

    assert zerogpu.prepare_environment()
    assert os.environ["DES_CACHE_ON_CPU"] == "1"
    runner = Runner(cache=types.SimpleNamespace(is_fake=True, profile="tiny"))
    short = LD.LayerDiffusionInputs(image=photo, text="a cat jumping in a forest", embed_steps=10, tune_steps=10,
                                    steps=10)
    long = LD.LayerDiffusionInputs(image=photo, text="a cat jumping in a forest")  # 500 + 250 + 50 steps
    seen = []
    runner.call(lambda inputs, on_step: seen.append(inputs), short)
    runner.call(_fake_run, long)
    assert len(fake_spaces) == 2
    assert fake_spaces[0] == 60  # a function without estimate_seconds gets the default
    assert fake_spaces[1] == int(min(300, LD.estimate_seconds(long))) and fake_spaces[1] > 60


def _fake_run(inputs, on_step):
    return None


_fake_run.__module__ = LD.__name__  # the runner asks the function's module for estimate_seconds

"""The page side of live previews (ui/live_preview.py): Edit's click arms the session's slot and
starts the timer; while the method runs, each tick shows the newest TAESD preview; after the run
the tick hides the preview and stops the timer; a run that never starts (input refused) expires;
--no-previews and missing TAESD weights turn previews off. Driven through the app's own event
functions (the browser check is in tests/test_browser_feedback.py)."""
import types

import gradio as gr
from PIL import Image

from ui import live_preview as LP

REQ = types.SimpleNamespace(session_hash="session-1")


def _handlers(demo, prefix):
    found = {}
    for dep in demo.fns.values():
        name = getattr(dep.fn, "__name__", "")
        ids = [getattr(c, "elem_id", None) for c in dep.outputs]
        if name == "tick" and f"{prefix}-live" in ids:
            found["tick"] = dep.fn
            timer = dep.outputs[1]
            for other in demo.fns.values():
                if getattr(other.fn, "__name__", "") == "arm" and other.outputs and other.outputs[0] is timer:
                    found["arm"] = other.fn
    return found


def test_edit_arms_ticks_show_previews_and_the_end_hides_them(tiny_models, photo):
    from engine.methods import sdedit
    from ui import build_demo

    demo = build_demo(tiny_models)
    fns = _handlers(demo, "sdedit")
    assert set(fns) == {"arm", "tick"}
    runner = demo.runner
    assert fns["arm"](REQ)["active"] is True
    image, timer = fns["tick"](REQ)
    assert image == gr.update() and timer["active"] is True  # armed, the run has not started yet
    seen = []
    runner.previews.every_s = 0.0

    def progress(*args, **kwargs):  # called at every step, while the run holds the slot
        seen.append(fns["tick"](REQ))

    inputs = sdedit.SDEditInputs(image=photo, prompt="a tiger", steps=12, resolution=64, seed=1)
    result = runner.run(sdedit, inputs, request=REQ, progress=progress)
    shown = [img["value"] for img, t in seen if img.get("visible") is True]
    assert shown and all(isinstance(v, Image.Image) for v in shown), seen[:3]
    assert all(t["active"] is True for _, t in seen)
    image, timer = fns["tick"](REQ)  # the run has ended
    assert image["visible"] is False and image["value"] is None and timer["active"] is False
    assert result.images  # the edit itself is unaffected


def test_a_run_that_never_starts_expires(monkeypatch, tiny_models):
    previews = LP.LivePreviews(tiny_models)
    previews.arm("s")
    assert previews.take("s") == ("waiting", None)
    monkeypatch.setattr(LP, "ARM_S", -1.0)
    assert previews.take("s") == ("ended", None)
    assert previews.take("s") == ("ended", None)  # and stays ended


def test_no_previews_flag_and_missing_weights_turn_previews_off(tiny_models, monkeypatch):
    from engine.models import ModelUnavailable
    from ui import build_demo

    demo = build_demo(tiny_models, previews=False)
    assert demo.runner.previews.previewer() is None
    assert _handlers(demo, "sdedit")["arm"](REQ)["active"] is False

    class NoTaesd:
        def get(self, name):
            raise ModelUnavailable("TAESD is not on this machine")

    previews = LP.LivePreviews(NoTaesd())
    assert previews.previewer() is None and previews.enabled is False

    class BrokenTaesd:
        def get(self, name):
            raise RuntimeError("Error(s) in loading state_dict for AutoencoderTiny")

    previews = LP.LivePreviews(BrokenTaesd())
    assert previews.previewer() is None and previews.enabled is False


def test_every_method_tab_has_a_live_preview(tiny_models):
    from ui import build_demo

    demo = build_demo(tiny_models)
    for prefix in ("sdedit", "p2pz", "ito", "iir-net", "iedit", "ld"):
        assert set(_handlers(demo, prefix)) == {"arm", "tick"}, prefix

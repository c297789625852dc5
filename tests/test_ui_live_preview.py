"""The page side of live previews (ui/live_preview.py): Edit's click arms the session's run with a
token; while the method runs, each TAESD preview is published in the token's folder and
`state.json` names the newest; after the run the state says "ended" and the images are gone; a
token the page script would not make is refused; an API call (no click) pays nothing; --no-previews
and missing TAESD weights turn previews off. Driven through the app's own event functions; the
served files through the launched app; the browser check is in tests/test_browser_feedback.py."""
import json
import os
import types
import urllib.request

from PIL import Image

from ui import live_preview as LP

REQ = types.SimpleNamespace(session_hash="session-1")
TOKEN = "0123456789abcdef0123456789abcdef"


def _arm_handler(demo, prefix):
    """The `arm` listener of the tab's Edit click (its input is the tab's hidden token box)."""
    for dep in demo.fns.values():
        ids = [getattr(c, "elem_id", None) for c in dep.inputs]
        if getattr(dep.fn, "__name__", "") == "arm" and f"{prefix}-live-token" in ids:
            return dep
    return None


def _state(folder):
    return json.loads((folder / "state.json").read_text())


def test_edit_arms_the_run_publishes_previews_and_the_end_says_ended(tiny_models, photo, tmp_path):
    from engine.methods import sdedit
    from ui import build_demo

    demo = build_demo(tiny_models)
    runner = demo.runner
    runner.previews.root = tmp_path
    dep = _arm_handler(demo, "sdedit")
    assert dep is not None and not dep.queue and LP.TOKEN.fullmatch(TOKEN)
    assert "desLive.start" in dep.js  # the page script makes the token and starts polling first
    dep.fn(TOKEN, REQ)
    folder = tmp_path / TOKEN
    assert _state(folder) == {"state": "waiting", "seq": 0}  # armed, the run has not started yet
    seen = []
    runner.previews.every_s = 0.0
    runner.progress_every_s = 0.0  # a progress call at every step, to look at the folder

    def progress(*args, **kwargs):  # called at every step, while the run holds the slot
        state = _state(folder)
        image = folder / f"{state['seq']}.jpg"
        seen.append((state, Image.open(image).size if image.exists() else None))

    inputs = sdedit.SDEditInputs(image=photo, prompt="a tiger", steps=12, resolution=64, seed=1)
    result = runner.run(sdedit, inputs, request=REQ, progress=progress)
    assert all(s["state"] == "running" for s, _ in seen), seen
    seqs = [s["seq"] for s, _ in seen]
    assert seqs == sorted(seqs) and seqs[-1] >= 5, seqs  # a new preview at (nearly) every step
    assert all(size is not None for s, size in seen if s["seq"] > 0), seen  # the named image is there
    assert len(list(folder.glob("*.jpg"))) == 0 and _state(folder)["state"] == "ended"
    assert result.images  # the edit itself is unaffected
    assert runner.previews.start(runner._key(REQ)) is None  # one click arms one run


def test_tokens_the_page_would_not_make_are_refused(tiny_models, tmp_path):
    previews = LP.LivePreviews(tiny_models, root=tmp_path / "previews")
    for bad in ("../../etc", TOKEN.upper(), TOKEN[:-1], TOKEN + "0", "", None, 5, f"{TOKEN[:16]}/{TOKEN[17:]}"):
        assert previews.arm("s", bad) is False, bad
    assert not (tmp_path / "previews").exists() or not any((tmp_path / "previews").iterdir())
    assert previews.start("s") is None


def test_an_api_call_is_not_armed_and_gets_no_previewer(tiny_models, tmp_path):
    from ui.runner import Runner

    runner = Runner(tiny_models)
    runner.previews.root = tmp_path
    got = []

    def fn(on_step):
        got.append(getattr(on_step, "previewer", None))
        return "done"

    assert runner.call(fn, request=REQ, previews=True) == "done"
    assert got == [None] and not any(tmp_path.iterdir())


def test_no_previews_flag_and_missing_weights_turn_previews_off(tiny_models, tmp_path):
    from engine.models import ModelUnavailable
    from ui import build_demo
    from ui.runner import Runner

    demo = build_demo(tiny_models, previews=False)
    assert demo.runner.previews.previewer() is None
    assert _arm_handler(demo, "sdedit") is None  # the page does not poll at all
    assert demo.runner.previews.arm("s", TOKEN) is False

    class NoTaesd:
        def get(self, name):
            raise ModelUnavailable("TAESD is not on this machine")

    class BrokenTaesd:
        def get(self, name):
            raise RuntimeError("Error(s) in loading state_dict for AutoencoderTiny")

    for cache in (NoTaesd(), BrokenTaesd()):
        previews = LP.LivePreviews(cache)
        assert previews.previewer() is None and previews.enabled is False

    # Armed, then TAESD turns out missing: the run goes on and the page is told to stop asking.
    runner = Runner(tiny_models)
    runner.previews.root = tmp_path
    runner.previews.cache = NoTaesd()
    assert runner.previews.arm(runner._key(REQ), TOKEN)
    assert runner.call(lambda on_step: on_step.previewer, request=REQ, previews=True) is None
    assert _state(tmp_path / TOKEN)["state"] == "ended"


def test_old_folders_are_swept_at_the_next_arm(tiny_models, tmp_path):
    previews = LP.LivePreviews(tiny_models, root=tmp_path)
    ended, waiting, fresh = (LP.Slot(tmp_path / name) for name in ("a" * 32, "b" * 32, "c" * 32))
    ended.finish()
    fresh.finish()
    old = os.stat(ended.folder / "state.json").st_mtime - 120
    os.utime(ended.folder / "state.json", (old, old))
    ancient = old - LP.STALE_S
    os.utime(waiting.folder / "state.json", (ancient, ancient))
    (tmp_path / ("d" * 32)).mkdir()  # just made by another session's arm, its state not written yet
    assert previews.arm("s", TOKEN)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["c" * 32, "d" * 32, TOKEN])


def test_every_method_tab_arms_and_ends_its_preview(tiny_models):
    from ui import build_demo

    demo = build_demo(tiny_models)
    for prefix in ("sdedit", "p2pz", "ito", "iir-net", "iedit", "ld"):
        dep = _arm_handler(demo, prefix)
        assert dep is not None, prefix
        ends = [d for d in demo.fns.values() if d.js and f'desLive.end("{prefix}")' in d.js]
        assert len(ends) == 1 and ends[0].fn is None, prefix  # chained after the tab's edit event


def test_the_app_serves_a_runs_previews_and_nothing_else(tiny_models):
    from tests.ui_helpers import running_app

    slot = LP.Slot(LP.PREVIEW_ROOT / TOKEN)
    slot.start()
    slot.show(Image.new("RGB", (32, 24), (200, 10, 10)))
    try:
        with running_app(tiny_models) as url:
            base = f"{url}gradio_api/file={LP.PREVIEW_ROOT.as_posix()}/{TOKEN}/"
            assert json.loads(urllib.request.urlopen(base + "state.json").read()) == {"state": "running", "seq": 1}
            with urllib.request.urlopen(base + "1.jpg") as r:
                assert r.headers["content-type"] == "image/jpeg"
            for outside in (f"{url}gradio_api/file={LP.PREVIEW_ROOT.parent.as_posix()}/",
                            f"{url}gradio_api/file={base.split('file=')[1]}../../etc/passwd"):
                try:
                    urllib.request.urlopen(outside)
                    raise AssertionError(f"served {outside}")
                except urllib.error.HTTPError as exc:
                    assert exc.code in (403, 404)
    finally:
        slot.finish()

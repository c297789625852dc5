"""Widgets every tab shares: the photo-with-brush input, the seed row, the results panel and
the fake-weights banner. Conversions from Gradio's values to engine inputs live here too, so
tabs stay free of image handling."""
from __future__ import annotations

import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import gradio as gr
import numpy as np
from PIL import Image

from engine.report import jsonable
from engine.types import EditResult

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EXAMPLES = ASSETS / "examples"
MAX_SEED = 2**32 - 1
HANDOUT_ROOT = Path(tempfile.gettempdir()) / "des-handouts"
HANDOUT_MAX_AGE_S = 600.0


def example(name: str) -> str:
    return str(EXAMPLES / name)


def handout_path(name: str) -> Path:
    """A fresh path HANDOUT_ROOT/<random>/name for a file an event hands to Gradio (the segment
    tab's mask.png, History's restored photo). Gradio copies such a file into its own cache when the
    event returns, so ours is needed for seconds; folders older than HANDOUT_MAX_AGE_S are removed
    here, and a long-running app keeps a bounded few instead of one folder per click."""
    HANDOUT_ROOT.mkdir(parents=True, exist_ok=True)
    cutoff = time.time() - HANDOUT_MAX_AGE_S
    for old in HANDOUT_ROOT.iterdir():
        try:
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass  # another request removed it first
    return Path(tempfile.mkdtemp(dir=HANDOUT_ROOT)) / name


def banner(runner) -> None:
    """A visible warning when the weights are random (tiny / sd15-shape profiles), or when real
    weights the tabs need are not on this machine (which, and the ways to get them)."""
    missing = runner.cache.missing()
    if missing:
        from engine.models import COMPONENTS

        rows = "\n".join(f"- **{COMPONENTS[n].description or n}** (`{n}`): {why}" for n, why in missing.items())
        gr.Markdown(
            "**Some models are not on this machine**, so the tabs that need them will fail:\n\n"
            f"{rows}\n\nTo fix: download them (without `HF_HUB_OFFLINE=1` the first use does, about 4 GB for "
            "Stable Diffusion), or point the app at local copies laid out like the hub repositories with "
            "`--model NAME=FOLDER` (or `DES_MODEL_<NAME>`), or start with `--profile tiny` to try every button "
            "on small random-weight models.", elem_classes=["fake-banner"], elem_id="missing-banner")
    if runner.is_fake:
        gr.Markdown(
            f"**Profile `{runner.cache.profile}`: the models have random weights.** Every button works, "
            "but the outputs are noise. Start with `--profile sd15` (the default) for real edits.",
            elem_classes=["fake-banner"], elem_id="fake-banner")


def how_it_works(text: str) -> None:
    """A method's longer explanation, folded under the tab (the lead line above the photo stays short
    so the photo, the controls and Edit fit one screen)."""
    with gr.Accordion("How it works", open=False, elem_classes=["how-it-works"]):
        gr.Markdown(text)


def quick_defaults_note(runner, module) -> None:
    """Under a tab's advanced settings: which defaults the profile made quicker than the paper's."""
    from engine.profile_defaults import describe

    text = describe(module, runner.cache.profile)
    if text:
        gr.Markdown(f"*Quick defaults of the `{runner.cache.profile}` profile:* {text}.",
                    elem_classes=["quick-defaults"])


def seed_row(value: int = 0) -> gr.Number:
    """A seed box with a button that draws a random seed."""
    with gr.Row(equal_height=True):
        seed = gr.Number(value=value, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, scale=4)
        dice = gr.Button("Random seed", scale=1, size="sm")
    dice.click(lambda: random.randint(0, MAX_SEED), None, seed, api_name=False, queue=False)
    return seed


@dataclass
class ResultPanel:
    results: gr.Gallery
    compare: gr.ImageSlider
    intermediates: gr.Gallery
    details: gr.JSON

    @property
    def outputs(self) -> list:
        return [self.results, self.compare, self.intermediates, self.details]


def result_panel(num_results_label: str = "Results") -> ResultPanel:
    # The column holding these stays in view while the controls scroll (assets/studio.css), so a
    # result is on screen when it arrives.
    compare = gr.ImageSlider(label="Before / after", type="pil", max_height=520, elem_classes=["result-compare"])
    results = gr.Gallery(label=num_results_label, columns=4, height="auto", type="pil", format="png",
                         elem_classes=["result-gallery"])
    intermediates = gr.Gallery(label="Intermediates", columns=4, height="auto", type="pil", format="png",
                               elem_classes=["result-intermediates"])
    details = gr.JSON(label="Run details (seconds, UNet evaluations, parameters)")
    return ResultPanel(results, compare, intermediates, details)


def present(result: EditResult, before: Image.Image, chosen: int = 0) -> tuple:
    """EditResult -> values for ResultPanel.outputs."""
    after = result.images[min(chosen, len(result.images) - 1)]
    if before.size != after.size:
        before = before.resize(after.size, Image.Resampling.LANCZOS)
    # Saved results are shown from their PNG files, so the gallery's download button gives the file
    # with its settings inside (History restores it); unsaved ones as images.
    saved = list(getattr(result, "saved_paths", None) or [])
    shown = [str(saved[i]) if i < len(saved) else img for i, img in enumerate(result.images)]
    gallery = [(item, f"seed {result.seed} · result {i + 1}") for i, item in enumerate(shown)]
    inter = [(img, name) for name, img in result.intermediates.items()]
    details = {"seed": result.seed, "seconds": result.seconds, "unet_evals": result.unet_evals,
               "notes": result.notes, "params": jsonable(result.params)}
    return gallery, (before.convert("RGB"), after), inter, details


@dataclass
class RestoreTarget:
    """Which widgets of a tab take which of a method's saved parameters (see the History tab)."""

    method: str
    tab: str
    fields: dict
    editor: Optional[gr.ImageEditor] = None
    extra_outputs: list = field(default_factory=list)
    extra: Optional[Callable[[dict, dict], list]] = None  # (settings, saved images) -> extra_outputs' values


def restorable(runner, method: str, tab_module: str, fields: dict, editor: Optional[gr.ImageEditor] = None,
               extra_outputs: Optional[list] = None, extra: Optional[Callable[[dict, dict], list]] = None) -> None:
    """Let saved results of `method` restore this tab: fields maps a saved parameter name to the
    widget that sets it; `editor` (a photo/mask editor) gets the saved input photo and mask;
    `extra(settings, images)` gives the values of `extra_outputs`, for widgets that need more than
    a saved parameter (`images`: the saved image inputs by field name, see engine.history)."""
    runner.restore_targets.append(RestoreTarget(method, tab_module.rsplit(".", 1)[-1], dict(fields), editor,
                                                list(extra_outputs or []), extra))


def editor_value(photo: Image.Image, mask: Optional[Image.Image] = None) -> dict:
    """An ImageEditor value showing `photo` with `mask` painted on its brush layer."""
    layers = []
    if mask is not None:
        m = np.asarray(mask.convert("L").resize(photo.size, Image.Resampling.NEAREST)) > 127
        rgba = np.zeros((photo.height, photo.width, 4), np.uint8)
        rgba[m] = (255, 255, 255, 153)
        layers.append(Image.fromarray(rgba, "RGBA"))
    photo = photo.convert("RGBA")
    return {"background": photo, "layers": layers, "composite": photo}


SHOW_RESULT_JS = """() => {
  const bring = () => {
    const shown = Array.from(document.querySelectorAll('.result-compare')).find(e => e.offsetParent !== null);
    if (!shown) return;
    const r = shown.getBoundingClientRect();
    if (r.top < 0 || r.bottom > window.innerHeight) window.scrollBy({top: r.top - 8});
  };
  bring();
  setTimeout(bring, 400);  // again once the images have their size
}"""
STOPPED = "Stopped. The models are unchanged; run again when ready."
NOTHING_TO_STOP = "Nothing was running (an edit still waiting in the queue is dropped)."


def run_buttons(prefix: str, label: str = "Edit", runner=None) -> tuple[gr.Button, gr.Button]:
    """The Edit button and its Stop button, side by side, and under them the line where Stop
    answers (`stop.status`, wired by wire_stop) and, given the runner, the live preview of a
    running edit (`stop.live`, ui/live_preview.py)."""
    with gr.Row():
        run = gr.Button(label, variant="primary", elem_id=f"{prefix}-run", scale=3)
        stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop", scale=1)
    stop.status = gr.Markdown("", elem_id=f"{prefix}-stop-status", elem_classes=["stop-status"])
    # Edit clears Stop's last answer, in the browser. This listener is registered before the tab's
    # edit event on purpose: the page runs a click's listeners in order and reaches a later one
    # only when the edit has ended, which would wipe the answer of the Stop that ended it.
    run.click(None, None, stop.status, js="() => ''", api_name=False, queue=False, show_progress="hidden")
    if runner is not None:  # armed by Edit's click before the edit event starts, for the same reason
        from ui.live_preview import live_preview

        stop.live = live_preview(runner, prefix, run)
    stop.run_button = run
    return run, stop


def wire_stop(runner, stop: gr.Button, event, api_name: str) -> None:
    """Stop asks the running edit of this browser session to end at its next step (the engine
    raises Cancelled and its `finally` blocks clean up) and drops the pending event. It answers
    in its own line every time: the cancelled event's own error never reaches the page."""
    def stop_run(request: gr.Request):
        return STOPPED if runner.stop(request) else NOTHING_TO_STOP

    stop.click(stop_run, None, stop.status, cancels=[event], api_name=api_name, queue=False,
               show_progress="hidden")
    if getattr(stop, "live", None) is not None:  # the edit has ended, run or not: no more previews
        from ui.live_preview import end_js

        event.then(None, None, None, js=end_js(stop.live.prefix))
    # The result column is sticky within its row; a person who scrolled past the row (to the
    # examples) is brought back to the result when it arrives.
    event.then(None, None, None, js=SHOW_RESULT_JS)

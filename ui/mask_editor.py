"""The one mask component every region-taking tab shares.

Single source of truth: the ImageEditor's brush layer. "Select by text" (Grounded-SAM or
CLIPSeg) and SAM clicks on the preview write their mask INTO that layer, where the brush and
the eraser correct it. `resolve_mask(editor, grow, feather, invert, whole_image)` turns the
editor value plus the four settings into the (photo, mask) a method receives; the preview
image is drawn from the same function, so the mask a method uses is the one on screen.

This module builds the component and wires its events; the editor values themselves (reading,
resolving, previewing) are in ui/mask_values.py, the upload rules in ui/upload_intake.py, and both
are re-exported here.

A tab uses it like this:

    me = mask_editor(runner, "mytab")
    def run(editor, grow, feather, invert, whole_image, prompt, ..., request: gr.Request, ...):
        photo, mask = resolve_mask(editor, grow, feather, invert, whole_image, required=True)
    button.click(run, me.inputs + [prompt, ...], outputs, api_name="mytab", concurrency_id="gpu")
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np

from engine.core import masks as M
from engine.types import StepInfo
from ui.mask_values import (ALPHA_THRESHOLD, CANVAS_SIZE, CLICK_MODES, ERROR_TITLE, LAYER_ALPHA,
                            MAX_FEATHER, MAX_GROW, METHODS, NOTHING_SELECTED, PAINT_FIRST, PHOTO_TITLE,
                            UPLOAD_MAX_SIDE, UPLOAD_MIN_SIDE, describe, editor_value, format_click, parse_clicks,
                            preview, read_editor, resolve_mask)
from ui.page_scripts import run_once_on_load
from ui.upload_intake import INTAKE_JS, intake, photo_key, unreadable_message  # noqa: F401

# What tabs and tests import from here, the values' and the intake's names included (re-exported).
__all__ = ["MaskEditor", "mask_editor", "select_by_text", "select_by_clicks", "fill_from_text",
           "ALPHA_THRESHOLD", "MAX_FEATHER", "MAX_GROW", "NOTHING_SELECTED", "PHOTO_TITLE", "resolve_mask",
           "intake", "photo_key", "unreadable_message"]

# -- engine calls (run through runner.call: ValueError -> gr.Error) ---------------------------

def select_by_text(models, photo, phrase, method, box_threshold, text_threshold, clipseg_threshold,
                   on_step=None) -> tuple[np.ndarray, str]:
    """Text -> (binary mask at photo size, message). Nothing found: an empty mask and a message."""
    from engine.core import segment as S

    if method not in METHODS:
        raise ValueError(f"selection method must be one of {', '.join(METHODS)}, got {method!r}")
    if on_step:
        on_step(StepInfo(f"{method}: loading models", 0, 2))
    if method == "CLIPSeg":
        try:
            clipseg_threshold = float(clipseg_threshold)
        except (TypeError, ValueError):
            clipseg_threshold = math.nan
        if not 0.0 <= clipseg_threshold <= 1.0:  # also refuses NaN
            raise ValueError("CLIPSeg threshold must be a number between 0 and 1")
        soft = S.clipseg_mask(models.get("clipseg"), photo, phrase)
        mask = M.binarize(soft, clipseg_threshold)
        if M.is_empty(mask):
            return mask, (f"nothing in the photo scored above the CLIPSeg threshold "
                          f"{clipseg_threshold:g} for '{phrase.strip()}'; lower it or draw the mask")
        return mask, f"CLIPSeg: {100 * M.coverage(mask):.1f}% of the photo above {clipseg_threshold:g}"
    gdino, sam = models.get("grounding_dino"), models.get("sam")
    if on_step:
        on_step(StepInfo(method, 1, 2))
    result = S.grounded_sam(gdino, sam, photo, phrase, box_threshold, text_threshold)
    return M.binarize(result.mask), result.message


def select_by_clicks(models, photo, points, on_step=None) -> tuple[np.ndarray, str]:
    """SAM clicks [(x, y, positive)] -> (binary mask at photo size, message)."""
    from engine.core import segment as S

    if on_step:
        on_step(StepInfo("SAM", 0, 1))
    mask = M.binarize(S.sam_mask_from_points(models.get("sam"), photo, points))
    n_pos = sum(1 for p in points if p[2])
    what = f"{n_pos} object and {len(points) - n_pos} background click(s)"
    if M.is_empty(mask):
        return mask, f"SAM's mask for {what} is empty; click elsewhere on the object or draw the mask"
    return mask, f"SAM mask for {what}"


@dataclass
class MaskEditor:
    """The widgets of one mask editor. Pass `inputs` first to an event; see `resolve_mask`."""

    editor: gr.ImageEditor
    text: gr.Textbox
    select: gr.Button
    method: gr.Radio
    add: gr.Checkbox
    box_threshold: gr.Slider
    text_threshold: gr.Slider
    clipseg_threshold: gr.Slider
    preview: gr.Image
    click_mode: gr.Radio
    clicks: gr.Textbox
    clear_clicks: gr.Button
    clear_mask: gr.Button
    grow: gr.Slider
    feather: gr.Slider
    invert: gr.Checkbox
    whole_image: gr.Checkbox
    message: gr.Markdown  # what the last text or click selection found
    status: gr.Markdown   # what the mask on screen covers
    base: Any  # gr.State: the mask before the current set of clicks (for "add")
    key: Any = None     # gr.State: which photo the editor holds (its hash), to tell a new photo from a re-sent one
    intake: Any = None  # hidden gr.Button: the page clicks it when the browser could not open a chosen file
    selection: Any = None  # gr.State: (photo key, the last non-empty mask the editor held on that photo)

    @property
    def settings(self) -> list:
        """[grow, feather, invert, whole_image]: what History restores with the photo and its layer."""
        return [self.grow, self.feather, self.invert, self.whole_image]

    @property
    def inputs(self) -> list:
        """[editor, grow, feather, invert, whole_image]: the arguments of `resolve_mask`."""
        return [self.editor, self.grow, self.feather, self.invert, self.whole_image]


def mask_editor(runner, prefix: str, label: str = "Photo: paint the region (white brush, eraser to correct)",
                height: int = 320, refine_open: bool = False) -> MaskEditor:
    """Build the mask editor in the current Blocks context. `prefix` makes elem_ids
    (f"{prefix}-photo", f"{prefix}-select-text", ...) and api_names (f"{prefix}_select_text",
    f"{prefix}_select_click") unique per tab.

    On screen: the photo and the selection's messages; the tools (select by text and its method and
    thresholds, SAM clicks on the preview, grow, feather, invert, whole image) fold into "Select or
    refine the region" (f"{prefix}-refine"), closed in the method tabs so that the photo, the
    method's controls and Edit fit one 1366x768 screen, open in the Segment tab (`refine_open`)."""
    with gr.Group(elem_classes=["mask-editor"]):
        editor = gr.ImageEditor(
            label=label, type="pil", image_mode="RGBA", sources=("upload", "clipboard"), format="png",
            brush=gr.Brush(colors=[("#ffffff", LAYER_ALPHA)], color_mode="fixed", default_size=24),
            eraser=gr.Eraser(default_size=24), layers=False, transforms=(), height=height,
            # Gradio 6.31 centres a layer set from Python in the initial canvas: a small canvas
            # keeps text/click selections aligned with the photo.
            canvas_size=CANVAS_SIZE, elem_id=f"{prefix}-photo")
        message = gr.Markdown("", elem_id=f"{prefix}-select-message", elem_classes=["mask-message"])
        status = gr.Markdown(describe(None, None), elem_id=f"{prefix}-mask-status", elem_classes=["mask-message"])
        with gr.Accordion("Select or refine the region: by text, SAM clicks, grow, feather, invert, whole image",
                          open=refine_open, elem_id=f"{prefix}-refine"):
            with gr.Row(equal_height=True):
                text = gr.Textbox(label="Select by text", placeholder="the dog on the left", scale=4,
                                  elem_id=f"{prefix}-select-text")
                select = gr.Button("Select", scale=1, elem_id=f"{prefix}-select")
            with gr.Row(equal_height=True):
                method = gr.Radio(list(METHODS), value=METHODS[0], label="Text selection with", scale=2,
                                  elem_id=f"{prefix}-select-method")
                add = gr.Checkbox(False, label="Add to the mask (off: a new selection replaces it)", scale=2,
                                  elem_id=f"{prefix}-add")
            with gr.Accordion("Selection thresholds", open=False, elem_id=f"{prefix}-thresholds"):
                box_threshold = gr.Slider(0.0, 1.0, value=0.3, step=0.01, label="Box threshold (Grounded-SAM)",
                                          elem_id=f"{prefix}-box-threshold")
                text_threshold = gr.Slider(0.0, 1.0, value=0.25, step=0.01, label="Text threshold (Grounded-SAM)",
                                           elem_id=f"{prefix}-text-threshold")
                clipseg_threshold = gr.Slider(0.0, 1.0, value=0.4, step=0.01, label="CLIPSeg threshold",
                                              elem_id=f"{prefix}-clipseg-threshold")
            with gr.Row():
                with gr.Column(scale=1, min_width=220):
                    shown = gr.Image(label="Preview: click to select with SAM", type="pil", interactive=False,
                                     format="png", height=280, elem_id=f"{prefix}-preview")
                with gr.Column(scale=1, min_width=220):
                    click_mode = gr.Radio(list(CLICK_MODES), value=CLICK_MODES[0], label="A click adds",
                                          elem_id=f"{prefix}-click-mode")
                    clicks = gr.Textbox(label="Clicks (x,y,+ object / x,y,- background)", max_lines=2,
                                        placeholder="click the preview, or type 120,80,+ 40,30,-",
                                        elem_id=f"{prefix}-clicks")
                    with gr.Row():
                        clear_clicks = gr.Button("Clear clicks", size="sm")
                        clear_mask = gr.Button("Clear mask", size="sm")
                    grow = gr.Slider(-64, 64, value=0, step=1, label="Grow / shrink (px, negative shrinks)",
                                     elem_id=f"{prefix}-grow")
                    feather = gr.Slider(0, 64, value=0, step=1, label="Feather (px)", elem_id=f"{prefix}-feather")
                    with gr.Row():
                        invert = gr.Checkbox(False, label="Invert", elem_id=f"{prefix}-invert")
                        whole_image = gr.Checkbox(False, label="Use the whole image",
                                                  elem_id=f"{prefix}-whole-image")
        # Rendered but hidden: the page's intake script (INTAKE_JS) writes into it when the browser cannot
        # open a chosen file as an image; the editor itself then stays empty and tells Python nothing.
        intake = gr.Button("Report an unreadable file", visible="hidden", elem_classes=["des-intake"],
                           elem_id=f"{prefix}-intake")
        intake.note = gr.Textbox(visible="hidden", label="Unreadable file", elem_id=f"{prefix}-intake-note")
    base = gr.State(None)
    key = gr.State("")
    me = MaskEditor(editor, text, select, method, add, box_threshold, text_threshold, clipseg_threshold,
                    shown, click_mode, clicks, clear_clicks, clear_mask, grow, feather, invert, whole_image,
                    message, status, base, key, intake, gr.State(None))
    _wire(runner, prefix, me)
    run_once_on_load(INTAKE_JS)  # once per app, however many editors it has
    registry = getattr(runner, "mask_editors", None)
    if registry is None:
        registry = runner.mask_editors = {}
    registry[editor._id] = me  # History finds an editor's settings from the editor
    return me


def _select_text(runner):
    """The text selection (Grounded-SAM or CLIPSeg) that writes its mask into the editor's layer."""

    def select_text(editor, text, method, box_thr, text_thr, clip_thr, add, grow, feather, invert,
                    whole, request: gr.Request, progress=gr.Progress()):
        photo, painted = read_editor(editor)
        if photo is None:
            raise gr.Error("Upload a photo first.", title=ERROR_TITLE, print_exception=False)
        mask, message = runner.call(select_by_text, runner.cache, photo, text, method, box_thr, text_thr,
                                    clip_thr, request=request, progress=progress)
        message = message[:1].upper() + message[1:]
        if M.is_empty(mask):
            gr.Warning(message)
        layer = _combine(painted, mask, add)
        value = editor_value(photo, layer)
        return (value, *preview(value, grow, feather, invert, whole), message, "", None, _remember(photo, layer))

    return select_text


def _remember(photo, layer):
    """The `selection` state: (photo key, mask), or None for an empty mask."""
    return None if M.is_empty(layer) else (photo_key(photo), layer)


def _combine(painted, mask, add, base=None):
    """The new layer: the selection, joined to the earlier mask when "add" is ticked."""
    prior = base if base is not None else painted
    if add and prior is not None and prior.shape == mask.shape:
        mask = M.union([prior, mask])
    return mask


def fill_from_text(runner, me: MaskEditor, triggers: list, text, method, clipseg_threshold, api_name: str):
    """Wire `triggers` to select the words in `text` (a component) with `method` (a component whose
    value is one of METHODS) into `me`'s layer, with `clipseg_threshold` (a component) and the
    editor's own Grounded-SAM thresholds: a tab's own words (iEdit's edit term) fill the one mask
    on screen instead of making a second, hidden one."""
    select = _select_text(runner)

    def fill(editor, text, method, box_thr, text_thr, clip_thr, add, grow, feather, invert, whole,
             request: gr.Request, progress=gr.Progress()):
        if not (text or "").strip():
            raise gr.Error("Type the words to select first.", title=ERROR_TITLE, print_exception=False)
        return select(editor, text, method, box_thr, text_thr, clip_thr, add, grow, feather, invert, whole,
                      request=request, progress=progress)

    inputs = [me.editor, text, method, me.box_threshold, me.text_threshold, clipseg_threshold, me.add, *me.settings]
    return gr.on(triggers, fill, inputs, [me.editor, me.preview, me.status, me.message, me.clicks, me.base,
                                          me.selection],
                 api_name=api_name, concurrency_id="gpu", show_progress_on=[me.preview])


def _wire(runner, prefix: str, me: MaskEditor) -> None:
    settings = me.settings

    def add_click(editor, clicks, mode, base, evt: gr.SelectData):
        photo, painted = read_editor(editor)
        if photo is None:
            raise gr.Error("Upload a photo first.", title=ERROR_TITLE, print_exception=False)
        x, y = evt.index[:2]
        clicks = (clicks or "").strip()
        if not clicks:  # a new set of clicks starts from the mask as it is now
            base = painted if painted is not None else M.empty(photo.size)
        return f"{clicks} {format_click(x, y, mode != 'background')}".strip(), base

    def select_click(editor, clicks, add, grow, feather, invert, whole, base,
                     request: gr.Request, progress=gr.Progress()):
        photo, painted = read_editor(editor)
        if photo is None:
            raise gr.Error("Upload a photo first.", title=ERROR_TITLE, print_exception=False)
        points = parse_clicks(clicks)
        mask, message = runner.call(select_by_clicks, runner.cache, photo, points, request=request,
                                    progress=progress)
        message = message[:1].upper() + message[1:]
        if M.is_empty(mask):
            gr.Warning(message)
        layer = _combine(painted, mask, add, base)
        value = editor_value(photo, layer)
        return (value, *preview(value, grow, feather, invert, whole), message, _remember(photo, layer))

    def clear(editor, grow, feather, invert, whole):
        photo, _ = read_editor(editor)
        if photo is None:
            return None, None, describe(None, None), "", "", None, None
        value = editor_value(photo, M.empty(photo.size))
        return (value, *preview(value, grow, feather, invert, whole), "", "", None, None)

    def uploaded(editor, grow, feather, invert, whole, key, selection):
        """A photo arrived. Gradio 6.31's editor also fires "upload" when Python sets its value (after
        every selection) and when it re-mounts, and a person may choose the same file again: the same
        photo keeps the clicks, the selection message and the click base, and its mask: when the
        editor arrives without one (choosing the same file again can drop the layer in the browser,
        depending on timing), the last mask seen on that photo is put back. Only a new photo starts
        afresh. Too small: refused; too large: downscaled."""
        keep = gr.update()
        try:
            photo, painted = read_editor(editor)
        except gr.Error as exc:
            gr.Warning(exc.message)
            return keep, None, f"**{exc.message}**", keep, keep, keep, keep, keep
        if photo is None:
            return keep, *preview(editor, grow, feather, invert, whole), keep, keep, keep, keep, keep
        new_key = photo_key(photo)
        if new_key == key:  # the photo the editor already held: nothing the user did is undone
            lost = painted is None or M.is_empty(painted)
            if lost and selection is not None and selection[0] == new_key:
                value = editor_value(photo, selection[1])
                return value, *preview(value, grow, feather, invert, whole), keep, keep, keep, keep, keep
            return keep, *preview(editor, grow, feather, invert, whole), keep, keep, keep, keep, keep
        kept, note = intake(photo)
        if kept is None:
            gr.Warning(note)
            return None, None, describe(None, None), f"**{note}**", "", None, "", None
        if kept is not photo:
            gr.Info(note)
            value = {"background": kept.convert("RGBA"), "layers": [], "composite": kept.convert("RGBA")}
            return (value, *preview(value, grow, feather, invert, whole), note, "", None, photo_key(kept), None)
        return keep, *preview(editor, grow, feather, invert, whole), note, "", None, new_key, None

    def unreadable(report=""):
        if not (report or "").strip():
            return gr.update()
        message = unreadable_message(report)
        gr.Warning(message)
        return f"**{message}**"

    def changed(editor, grow, feather, invert, whole, selection):
        """The preview and status of what the editor holds; a non-empty mask is remembered with its
        photo's key, for `uploaded` to put back if the same photo arrives without it. A photo over
        UPLOAD_MAX_SIDE has not been through `uploaded` yet (its change fires beside its upload, and
        may end after it): the preview is left to `uploaded`, which shows the downscaled photo."""
        keep = gr.update()
        try:
            photo, painted = read_editor(editor)
        except gr.Error:
            photo, painted = None, None
        if photo is not None and max(photo.size) > UPLOAD_MAX_SIDE:
            return keep, keep, selection
        shown, status = preview(editor, grow, feather, invert, whole)
        if status == f"**{PAINT_FIRST}**":
            gr.Warning(PAINT_FIRST)
        elif shown is not None and min(shown.size) < UPLOAD_MIN_SIDE:  # refused on upload: not the photo
            return None, describe(None, None), selection
        if photo is not None and painted is not None and not M.is_empty(painted):
            selection = (photo_key(photo), painted)  # brush strokes (selections also set it themselves)
        return shown, status, selection

    outs = [me.editor, me.preview, me.status, me.message]
    text_inputs = [me.editor, me.text, me.method, me.box_threshold, me.text_threshold, me.clipseg_threshold,
                   me.add, *settings]
    gr.on([me.select.click, me.text.submit], _select_text(runner), text_inputs,
          outs + [me.clicks, me.base, me.selection],
          api_name=f"{prefix}_select_text", concurrency_id="gpu", show_progress_on=[me.preview])
    click_inputs = [me.editor, me.clicks, me.add, *settings, me.base]
    me.preview.select(add_click, [me.editor, me.clicks, me.click_mode, me.base], [me.clicks, me.base],
                      api_name=False, queue=False, show_progress="hidden").success(
        select_click, click_inputs, outs + [me.selection], api_name=f"{prefix}_select_click", concurrency_id="gpu",
        show_progress_on=[me.preview])
    me.clicks.submit(select_click, click_inputs, outs + [me.selection], api_name=False, concurrency_id="gpu",
                     show_progress_on=[me.preview])
    me.clear_clicks.click(lambda: ("", None), None, [me.clicks, me.base], api_name=False, queue=False)
    me.clear_mask.click(clear, [me.editor, *settings], outs + [me.clicks, me.base, me.selection], api_name=False,
                        show_progress="hidden")
    me.editor.upload(uploaded, [me.editor, *settings, me.key, me.selection],
                     [me.editor, me.preview, me.status, me.message, me.clicks, me.base, me.key, me.selection],
                     api_name=False, show_progress="hidden")
    me.editor.clear(lambda: (None, describe(None, None), "", "", None, "", None), None,
                    [me.preview, me.status, me.message, me.clicks, me.base, me.key, me.selection], api_name=False,
                    queue=False)
    # The script's note on this editor is the argument (a button sends no value of its own).
    report_js = (f"() => (document.getElementById('{prefix}-photo')?.closest('.mask-editor')?.dataset.desIntake"
                 " || '')")
    me.intake.click(unreadable, me.intake.note, me.message, js=report_js, api_name=False,
                    show_progress="hidden")
    gr.on([me.editor.change, *(c.change for c in settings)], changed, [me.editor, *settings, me.selection],
          [me.preview, me.status, me.selection], api_name=False, trigger_mode="always_last", show_progress="hidden")

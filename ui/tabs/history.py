"""History tab: every result saved under the outputs folder, with its settings inside the PNG.
Dropping such a PNG here (or picking one from the list) fills its tab with the same settings,
photo and mask, so the same seed reproduces the same result."""
from __future__ import annotations


import gradio as gr

from engine import history
from ui import components as C

TITLE = "History"
ORDER = 90
SETTINGS = ("grow", "feather", "invert", "whole_image")  # ui.mask_editor.MaskEditor.settings, in order
NEUTRAL = {"grow": 0, "feather": 0, "invert": False, "whole_image": False}


def _png_file(image) -> str:
    """The image as a PNG file (a PIL value would be re-encoded as lossy WebP by gr.Image)."""
    path = C.handout_path("photo.png")
    image.save(path)
    return str(path)


def build(runner) -> None:
    if runner.outputs is None:
        gr.Markdown("Results are not being saved (the app was started without an outputs folder).")
        return
    gr.Markdown(f"Every result is saved in `{runner.outputs}` with its settings written into the PNG. "
                "Drop such a PNG below, or click one in the list, to open its tab with the same settings, "
                "photo and mask; **Edit** then reproduces it.")
    def listing():
        return [(str(p), p.parent.name) for p in history.recent(runner.outputs)]

    with gr.Row():
        with gr.Column():
            dropped = gr.File(label="Result PNG to restore", file_types=[".png"], type="filepath",
                              elem_id="history-drop")
            settings = gr.JSON(label="Settings found in the PNG")
        with gr.Column():
            refresh = gr.Button("Refresh", size="sm")
            recent = gr.Gallery(value=listing, label="Recent results (newest first)", columns=4, height="auto",
                                elem_id="history-gallery")

    targets = list(runner.restore_targets)
    outputs = [settings, runner.tabs]
    editors = getattr(runner, "mask_editors", {})

    def mask_settings(target) -> list:
        """The mask editor's grow / feather / invert / whole-image widgets the target's photo editor
        has, unless the tab restores one of them as a saved parameter (IIR-Net's whole image)."""
        me = editors.get(target.editor._id) if target.editor is not None else None
        if me is None:
            return []
        taken = {id(w) for w in target.fields.values()}
        return [(name, w) for name, w in zip(SETTINGS, me.settings) if id(w) not in taken]

    for target in targets:
        outputs += list(target.fields.values()) + ([target.editor] if target.editor is not None else [])
        outputs += [w for _, w in mask_settings(target)]
        outputs += target.extra_outputs

    def restore_from(path):
        if not path:
            return [gr.update()] * len(outputs)
        try:
            found = history.read_settings(path)
            images = history.read_images(path)
            photo, mask = images.get("image"), images.get("mask")
            state = history.read_editor_state(path)
        except (OSError, ValueError) as exc:
            raise gr.Error(str(exc) if isinstance(exc, ValueError) else "the file could not be read",
                           print_exception=False) from None
        target = next((t for t in targets if t.method == found["method"]), None)
        if target is None:
            raise gr.Error(f"no tab here runs {found['method']!r}", print_exception=False)
        values = [found, gr.Tabs(selected=target.tab)]
        for t in targets:
            for name in t.fields:
                if t is target and name in found["params"]:
                    values.append(found["params"][name])
                elif t is target and name == "seed":
                    values.append(found["seed"])
                else:
                    values.append(gr.update())
            if t.editor is not None:
                if t is target and photo is not None:
                    if not isinstance(t.editor, gr.ImageEditor):  # a plain photo input: lossless, as saved
                        values.append(_png_file(photo))
                    elif state is not None:  # the painted layer; the settings below remake the mask
                        values.append(C.editor_value(photo, state["painted"]))
                    else:  # the mask the method used, as the layer, with neutral settings
                        values.append(C.editor_value(photo, mask))
                else:
                    values.append(gr.update())
            for name, _ in mask_settings(t):
                if t is target and photo is not None:
                    values.append(state[name] if state is not None else NEUTRAL[name])
                else:
                    values.append(gr.update())
            if t.extra_outputs:
                values += t.extra(found, images) if t is target else [gr.update()] * len(t.extra_outputs)
        if found.get("profile") != runner.cache.profile:
            gr.Warning(f"saved with the {found.get('profile')!r} profile; this app runs {runner.cache.profile!r}, "
                       "so the result will differ")
        return values

    def pick(evt: gr.SelectData):
        value = evt.value or {}
        image = value.get("image") if isinstance(value, dict) else None
        path = image.get("path") if isinstance(image, dict) else image
        return restore_from(path)

    dropped.upload(restore_from, dropped, outputs, api_name="history_restore")
    recent.select(pick, None, outputs, api_name=False)
    refresh.click(listing, None, recent, api_name="history_list")

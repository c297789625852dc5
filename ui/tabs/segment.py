"""Segment tab: the shared mask editor on its own, with mask.png to download.
Mirrors `python -m engine segment`; no maths here (ui/mask_editor.resolve_mask does it)."""
from __future__ import annotations


import gradio as gr
from PIL import Image

from engine.core import masks as M
from ui import components as C
from ui.mask_editor import describe, mask_editor, resolve_mask

TITLE = "Segment"
ORDER = 8
API_NAME = "segment"


def build(runner) -> None:
    gr.Markdown("Select a region by text (Grounded-SAM: GroundingDINO boxes, SAM masks; or CLIPSeg), by clicks "
                "on the preview (SAM), or with the brush; correct it with the eraser, grow, shrink, feather or "
                "invert it, and download it as mask.png (white = selected). The same editor appears in every tab "
                "that edits a region. Command line: `python -m engine segment --image IN --out DIR --text ...`.")
    with gr.Row():
        with gr.Column():
            me = mask_editor(runner, "segment", refine_open=True)  # the tab is the mask tool
            button = gr.Button("Make mask.png", variant="primary", elem_id="segment-run")
        with gr.Column():
            mask_image = gr.Image(label="Mask (white = selected)", type="pil", image_mode="L", format="png",
                                  interactive=False, elem_id="segment-mask")
            download = gr.File(label="Download mask.png", elem_id="segment-download")
            details = gr.JSON(label="Mask details")

    def export(editor, grow, feather, invert, whole_image):
        photo, mask = resolve_mask(editor, grow, feather, invert, whole_image, required=False)
        if photo is None:
            raise gr.Error("Upload a photo first.", title="Please check the input", print_exception=False)
        status = describe(photo, mask)
        if mask is None:  # nothing selected: a defined result, the all-black mask
            gr.Warning("The mask is empty: nothing is selected.")
            mask = Image.new("L", photo.size, 0)
        path = C.handout_path("mask.png")
        mask.save(path)
        info = {"size": list(photo.size), "coverage": round(M.coverage(mask), 6),
                "binary": {value for _, value in mask.getcolors(256)} <= {0, 255},
                "empty": M.is_empty(mask), "full": M.is_full(mask), "status": status,
                "settings": {"grow_px": grow, "feather_px": feather, "invert": bool(invert),
                             "whole_image": bool(whole_image)}}
        return mask, str(path), info

    button.click(export, me.inputs, [mask_image, download, details], api_name=API_NAME)
    gr.Examples([[C.example("cat.png"), "the cat"], [C.example("coffee.png"), "the cup"]],
                [me.editor, me.text], label="Examples")

"""IIR-Net tab: text edits that keep what the text does not mention. Widgets -> IIRNetInputs ->
engine; no maths here. The badge always says which mode runs (trained or training-free)."""
from __future__ import annotations

import gradio as gr

from engine.core.iir_checkpoint import configured, preflight, trained_settings
from engine.core.phrases import noun_phrase
from engine.core.removal import MAX_NOISE
from engine.methods import iir_net
from ui import components as C
from ui.mask_editor import mask_editor, resolve_mask

TITLE = "IIR-Net"
ORDER = 3
API_NAME = "iir_net"

UNUSABLE = "**The checkpoint `{}` cannot be used** ({}); Edit will refuse it. Empty the field for the training-free mode."
TRAINED = "**Mode: trained IIR-Net** — a ControlNet trained on the removal module's output reads the photo ({})."
FREE = ("**Mode: training-free approximation** — no trained IIR-Net checkpoint is configured, so the removal "
        "image is repainted by img2img under the Canny ControlNet and the background is copied from the photo. "
        "Train one with `python -m engine.train.iir_net` and give its folder below.")


def badge_text(checkpoint: str | None = None, mode: str | None = None) -> str:
    """The mode badge: from a finished run's params.mode, or from the checkpoint field. A typed local
    path is inspected first (not loaded): one that is not a usable checkpoint says why instead of
    claiming the trained mode; a hub id is checked when it loads."""
    try:
        source = configured(checkpoint)
    except ValueError:
        source = None
    if mode is None and source:
        try:
            preflight(source)
        except ValueError as exc:
            return UNUSABLE.format(source, exc)
    if mode == "trained" or (mode is None and source):
        return TRAINED.format(f"`{source}`" if source else "checkpoint")
    return FREE


def roi_from_prompt(prompt: str) -> str:
    return noun_phrase(prompt or "") or ""


def checkpoint_changed(source):
    """The mode badge, and the Canny thresholds the checkpoint was trained with (its iir_net.json):
    the engine refuses other thresholds for a trained checkpoint, so the sliders follow it."""
    low = high = gr.update()
    if configured(source):
        try:
            trained = trained_settings(configured(source))
        except ValueError as exc:
            gr.Warning(str(exc))
            trained = None
        if trained is not None:
            low, high = trained.canny_low, trained.canny_high
    return badge_text(source), low, high


def build(runner) -> None:
    D = runner.defaults(iir_net)
    gr.Markdown("Edit what the prompt mentions and keep the rest (*IIR-Net*: image information removal).")
    badge = gr.Markdown(badge_text(), elem_id="iir-net-mode")
    with gr.Row():
        with gr.Column():
            region = mask_editor(runner, "iir_net", label="Photo: paint or select the region to edit, or leave it "
                                                          "empty to find it from the RoI text")
            prompt = gr.Textbox(label="Prompt", placeholder="a green airplane", elem_id="iir-net-prompt")
            roi_text = gr.Textbox(label="RoI text (what to edit; filled from the prompt's noun, editable)",
                                  placeholder="airplane", elem_id="iir-net-roi")
            noise = gr.Slider(0, MAX_NOISE, value=0, step=10,
                              label="Noise level k (0 = change colour only; higher = change texture too)")
            checkpoint = gr.Textbox(label="Trained IIR-Net checkpoint (folder or hub id; empty = training-free)",
                                    placeholder="outputs/iir-net", elem_id="iir-net-checkpoint")
            with gr.Accordion("Advanced", open=False):
                canny_low = gr.Slider(0, 255, value=100, step=1, label="Canny low threshold")
                canny_high = gr.Slider(0, 255, value=200, step=1, label="Canny high threshold")
                steps = gr.Slider(1, 100, value=D["steps"], step=1, label="DDIM steps")
                cfg = gr.Slider(1.0, 20.0, value=9.0, step=0.5, label="Guidance scale (CFG)")
                resolution = gr.Slider(64, 1024, value=D["resolution"], step=64, label="Resolution (longest side)")
                C.quick_defaults_note(runner, iir_net)
            seed = C.seed_row()
        with gr.Column():
            button, stop = C.run_buttons("iir-net", runner=runner)
            panel = C.result_panel("Edit")

    # Typing the prompt fills the RoI text; a restored or example prompt leaves the RoI text it came with.
    prompt.input(roi_from_prompt, prompt, roi_text, api_name=False, queue=False)
    checkpoint.change(checkpoint_changed, checkpoint, [badge, canny_low, canny_high], api_name=False, queue=False)

    def edit(editor, grow, feather, invert, whole_image, prompt, roi, noise, canny_low, canny_high, steps, cfg, resolution, seed,
             checkpoint, request: gr.Request, progress=gr.Progress()):
        # "Whole image" goes to the method as such (it records the RoI source); the mask is the one on screen.
        image, mask = resolve_mask(editor, grow, feather, invert, False, required=False)
        if image is None:
            raise gr.Error("Upload a photo first.", print_exception=False)
        inputs = iir_net.IIRNetInputs(image=image, prompt=prompt, roi_text=roi or None, mask=mask,
                                      whole_image=bool(whole_image), noise=noise, canny_low=canny_low,
                                      canny_high=canny_high, steps=steps, cfg=cfg, seed=seed,
                                      checkpoint=checkpoint or None,
                                      resolution=int(resolution) if resolution is not None else 512)
        result = runner.run(iir_net, inputs, request=request, progress=progress)
        return (*C.present(result, image), badge_text(checkpoint, result.params.get("mode")))

    C.restorable(runner, iir_net.NAME, __name__, {
        "prompt": prompt, "roi_text": roi_text, "noise": noise, "canny_low": canny_low, "canny_high": canny_high,
        "steps": steps, "cfg": cfg, "resolution": resolution, "seed": seed, "checkpoint": checkpoint,
        "whole_image": region.whole_image},
        editor=region.editor)
    event = button.click(edit, [*region.inputs, prompt, roi_text, noise, canny_low, canny_high, steps, cfg, resolution, seed,
                        checkpoint], [*panel.outputs, badge], api_name=API_NAME, concurrency_id="gpu",
                         show_progress_on=[panel.compare])
    C.wire_stop(runner, stop, event, api_name=f"{API_NAME}_stop")
    C.how_it_works('The region to edit is found from the RoI text with Grounded-SAM, painted with the brush, or the whole image. Inside it, colour is erased, and with the noise slider texture too; edges keep the shape. A trained IIR-Net ControlNet reads that removal image; without one, a labelled training-free approximation runs.')
    gr.Examples([[C.example("cat.png"), "a white cat", "cat", False, 0],
                 [C.example("coffee.png"), "a green cup", "cup", False, 0],
                 [C.example("rocket.jpg"), "a red rocket", "rocket", False, 300],
                 [C.example("grass.png"), "sand", "", True, 800]],
                [region.editor, prompt, roi_text, region.whole_image, noise], label="Examples")

"""iEdit tab: localised text edits inside a mask, four results at once. Widgets -> IEditInputs ->
engine; no maths here. The badge always says whether a fine-tuned iEdit UNet or the base model runs."""
from __future__ import annotations

import gradio as gr

from engine.methods import iedit
from ui import components as C
from ui.mask_editor import mask_editor, resolve_mask

TITLE = "iEdit"
ORDER = 4
API_NAME = "iedit"

MASK_FROM = {"CLIPSeg (edit term)": "clipseg", "Grounded-SAM (edit term)": "grounded-sam",
             "Brush (the mask painted on the photo)": "brush"}
FINE_TUNED = "**fine-tuned iEdit** — the UNet comes from the checkpoint {}."
BASE = ("**base model (no iEdit fine-tuning)** — no public iEdit weights exist, so the base Stable Diffusion "
        "runs iEdit's masked inference (Eq. 13). Train a checkpoint with `python -m engine.train.iedit` "
        "and give its folder below.")


def badge_text(checkpoint: str | None = None, mode: str | None = None) -> str:
    """The mode badge: from a finished run's params.mode, or from the checkpoint field."""
    checkpoint = (checkpoint or "").strip()
    if mode == "fine-tuned" or (mode is None and checkpoint):
        return FINE_TUNED.format(f"`{checkpoint}`" if checkpoint else "")
    return BASE


def build(runner) -> None:
    D = runner.defaults(iedit)
    gr.Markdown("Change one thing in a photo and keep the rest (Bodur et al., *iEdit*, 2023). Write the edit "
                "prompt, say which words are the edit; the mask comes from CLIPSeg for those words (as in the "
                "paper), from Grounded-SAM, or from your brush. Outside the mask the photo is kept at every step.")
    badge = gr.Markdown(badge_text(), elem_id="iedit-mode")
    with gr.Row():
        with gr.Column():
            me = mask_editor(runner, "iedit")
            prompt = gr.Textbox(label="Edit prompt", placeholder="a photograph of a brown horse eating grass",
                                elem_id="iedit-prompt")
            term = gr.Textbox(label="Edit term (the words of the prompt to change)", placeholder="brown horse",
                              elem_id="iedit-term")
            mask_from = gr.Radio(list(MASK_FROM), value=next(iter(MASK_FROM)), label="Mask from",
                                 elem_id="iedit-mask-from")
            strength = gr.Slider(0.6, 0.8, value=0.7, step=0.05, label="Sampling ratio (paper: 0.6-0.8)",
                                 elem_id="iedit-strength")
            checkpoint = gr.Textbox(label="Fine-tuned iEdit checkpoint (UNet folder, LoRA .safetensors or hub id; "
                                          "empty = base model)", placeholder="runs/iedit", elem_id="iedit-checkpoint")
            with gr.Accordion("Advanced", open=False):
                num_results = gr.Slider(1, 4, value=4, step=1, label="Results (one batch)")
                steps = gr.Slider(1, 200, value=D["steps"], step=1, label="DDIM steps")
                cfg = gr.Slider(1.0, 20.0, value=7.5, step=0.5, label="Guidance scale (CFG)")
                threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="CLIPSeg mask threshold")
                resolution = gr.Slider(64, 1024, value=D["resolution"], step=64, label="Resolution (longest side)")
                C.quick_defaults_note(runner, iedit)
            seed = C.seed_row()
            button, stop = C.run_buttons("iedit")
        with gr.Column():
            panel = C.result_panel("Results (click one to compare it with the photo)")
            shown = gr.Slider(1, 4, value=1, step=1, label="Result in the before/after slider", elem_id="iedit-shown")
    last = gr.State(None)  # (photo, results) of this session's last run, for picking one to compare

    checkpoint.change(lambda c: badge_text(c), checkpoint, badge, api_name=False, queue=False)

    def edit(editor, grow, feather, invert, whole, prompt, term, mask_from, strength, checkpoint, num_results,
             steps, cfg, threshold, resolution, seed, request: gr.Request, progress=gr.Progress()):
        source = MASK_FROM.get(mask_from, mask_from)
        photo, mask = resolve_mask(editor, grow, feather, invert, whole, required=source == "brush")
        if photo is None:
            raise gr.Error("Upload a photo first.", title="Please check the input", print_exception=False)
        inputs = iedit.IEditInputs(image=photo, prompt=prompt, mask_text=term or None,
                                   mask=mask if source == "brush" else None, mask_source=source,
                                   strength=strength, num_results=num_results, steps=steps, cfg=cfg, seed=seed,
                                   checkpoint=checkpoint or None, mask_threshold=threshold,
                                   resolution=int(resolution) if resolution is not None else 512)
        result = runner.run(iedit, inputs, request=request, progress=progress)
        return (*C.present(result, photo), badge_text(checkpoint, result.params.get("mode")),
                (photo, result.images), 1)

    def pick(state, index):
        """The before/after slider shows result `index` (1-based) of the last run."""
        if not state:
            raise gr.Error("Run an edit first.", title="Please check the input", print_exception=False)
        photo, images = state
        try:
            k = min(max(int(index), 1), len(images)) - 1
        except (TypeError, ValueError):
            raise gr.Error(f"pick a result between 1 and {len(images)}", title="Please check the input",
                           print_exception=False) from None
        after = images[k]
        return (photo.resize(after.size) if photo.size != after.size else photo, after)

    def pick_from_gallery(evt: gr.SelectData):
        return evt.index + 1

    C.restorable(runner, iedit.NAME, __name__, {
        "prompt": prompt, "mask_text": term, "strength": strength, "checkpoint": checkpoint,
        "num_results": num_results, "steps": steps, "cfg": cfg, "mask_threshold": threshold,
        "resolution": resolution, "seed": seed}, editor=me.editor)
    event = button.click(edit, [*me.inputs, prompt, term, mask_from, strength, checkpoint, num_results, steps, cfg,
                        threshold, resolution, seed], [*panel.outputs, badge, last, shown],
                 api_name=API_NAME, concurrency_id="gpu")
    C.wire_stop(runner, stop, event, api_name=f"{API_NAME}_stop")
    panel.results.select(pick_from_gallery, None, shown, api_name=False, queue=False)
    shown.change(pick, [last, shown], panel.compare, api_name="iedit_compare", queue=False)
    gr.Examples([[C.example("cat.png"), "a photo of a tiger", "cat", 0.7],
                 [C.example("coffee.png"), "a cup of green tea on a wooden table", "coffee", 0.7]],
                [me.editor, prompt, term, strength], label="Examples")

"""iEdit tab: localised text edits inside a mask, four results at once. Widgets -> IEditInputs ->
engine; no maths here. The badge always says whether a fine-tuned iEdit UNet or the base model runs."""
from __future__ import annotations

import gradio as gr

from engine.methods import iedit
from ui import components as C
from ui.mask_editor import fill_from_text, mask_editor, resolve_mask

TITLE = "iEdit"
ORDER = 4
API_NAME = "iedit"

FILL_WITH = ("CLIPSeg", "Grounded-SAM")  # ui.mask_editor.METHODS: what fills the mask from the edit term
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
    gr.Markdown("Change one thing in a photo and keep the rest (Bodur et al., *iEdit*, 2023).")
    badge = gr.Markdown(badge_text(), elem_id="iedit-mode")
    with gr.Row():
        with gr.Column():
            me = mask_editor(runner, "iedit")
            prompt = gr.Textbox(label="Edit prompt", placeholder="a photograph of a brown horse eating grass",
                                elem_id="iedit-prompt")
            term = gr.Textbox(label="Edit term (the words of the prompt to change)", placeholder="brown horse",
                              elem_id="iedit-term")
            with gr.Row(equal_height=True):
                fill_with = gr.Radio(list(FILL_WITH), value=FILL_WITH[0], label="Find the edit term with",
                                     scale=2, elem_id="iedit-fill-with")
                fill = gr.Button("Mask the edit term", scale=1, elem_id="iedit-fill")
            strength = gr.Slider(0.6, 0.8, value=0.7, step=0.05, label="Sampling ratio (paper: 0.6-0.8)",
                                 elem_id="iedit-strength")
            checkpoint = gr.Textbox(label="Fine-tuned iEdit checkpoint (UNet folder, LoRA .safetensors or hub id; "
                                          "empty = base model)", placeholder="runs/iedit", elem_id="iedit-checkpoint")
            with gr.Accordion("Advanced", open=False):
                num_results = gr.Slider(1, 4, value=4, step=1, label="Results (one batch)")
                steps = gr.Slider(1, 200, value=D["steps"], step=1, label="DDIM steps")
                cfg = gr.Slider(1.0, 20.0, value=7.5, step=0.5, label="Guidance scale (CFG)")
                threshold = gr.Slider(0.0, 1.0, value=0.5, step=0.05, elem_id="iedit-threshold",
                                      label="CLIPSeg mask threshold (for 'Mask the edit term')")
                resolution = gr.Slider(64, 1024, value=D["resolution"], step=64, label="Resolution (longest side)")
                C.quick_defaults_note(runner, iedit)
            seed = C.seed_row()
        with gr.Column():
            button, stop = C.run_buttons("iedit", runner=runner)
            panel = C.result_panel("Results (click one to compare it with the photo)")
            shown = gr.Slider(1, 4, value=1, step=1, label="Result in the before/after slider", elem_id="iedit-shown")
    last = gr.State(None)  # (photo, results) of this session's last run, for picking one to compare

    checkpoint.change(lambda c: badge_text(c), checkpoint, badge, api_name=False, queue=False)

    def edit(editor, grow, feather, invert, whole, prompt, term, strength, checkpoint, num_results,
             steps, cfg, threshold, resolution, seed, request: gr.Request, progress=gr.Progress()):
        # One mask per tab: the one on screen. The edit term fills it (Mask the edit term); it is not
        # a second, hidden mask.
        photo, mask = resolve_mask(editor, grow, feather, invert, whole, required=False)
        if photo is None:
            raise gr.Error("Upload a photo first.", title="Please check the input", print_exception=False)
        if mask is None:
            raise gr.Error("Nothing is selected: click 'Mask the edit term' to let CLIPSeg find it, paint the "
                           "region, select it by text or clicks, or tick 'Use the whole image'.",
                           title="Please check the mask", print_exception=False)
        inputs = iedit.IEditInputs(image=photo, prompt=prompt, mask_text=term or None, mask=mask, mask_source="brush",
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
    fill_from_text(runner, me, [fill.click, term.submit], term, fill_with, threshold, api_name="iedit_fill_mask")
    event = button.click(edit, [*me.inputs, prompt, term, strength, checkpoint, num_results, steps, cfg,
                        threshold, resolution, seed], [*panel.outputs, badge, last, shown],
                 api_name=API_NAME, concurrency_id="gpu", show_progress_on=[panel.compare])
    C.wire_stop(runner, stop, event, api_name=f"{API_NAME}_stop")
    panel.results.select(pick_from_gallery, None, shown, api_name=False, queue=False)
    shown.change(pick, [last, shown], panel.compare, api_name="iedit_compare", queue=False)
    C.how_it_works("Write the edit prompt, say which words are the edit, and **Mask the edit term**: CLIPSeg finds those words in the photo (as in the paper; or Grounded-SAM) and paints them into the photo's mask, where the brush, clicks and settings correct them. The mask on screen is the one the edit uses. Outside it the photo is kept at every step.")
    gr.Examples([[C.example("cat.png"), "a photo of a tiger", "cat", 0.7],
                 [C.example("coffee.png"), "a cup of green tea on a wooden table", "coffee", 0.7]],
                [me.editor, prompt, term, strength], label="Examples")

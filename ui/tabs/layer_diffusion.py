"""LayerDiffusion tab: a subject's action and its background changed together. Widgets ->
LayerDiffusionInputs -> engine; no maths here. Stop sets the runner's cancel flag, so the engine
stops at its next step and its `finally` removes the LoRA adapter from the shared UNet."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from engine.core.text_split import split_text
from engine.methods import layer_diffusion as LD
from ui import components as C
from ui.mask_editor import mask_editor, resolve_mask

TITLE = "LayerDiffusion"
ORDER = 5
API_NAME = "layer_diffusion"

# Curve names in EditResult.curves -> labels in the loss plot.
LOSS_LABELS = {"embed_loss_a": "embedding: e_a (subject)", "embed_loss_b": "embedding: e_b (background)",
               "tune_loss_obj": "fine-tuning: L_obj", "tune_loss_bg": "fine-tuning: L_bg"}


def loss_table(curves: dict) -> pd.DataFrame:
    """EditResult.curves -> the long table gr.LinePlot draws (step, loss, curve)."""
    steps, values, names = [], [], []
    for key, label in LOSS_LABELS.items():
        for i, v in enumerate(curves.get(key, [])):
            steps.append(i + 1)
            values.append(float(v))
            names.append(label)
    # Typed columns even when empty: the plot takes its axis types from the first value it shows,
    # and an empty untyped table made both axes categorical (labels stacked, no lines drawn).
    return pd.DataFrame({"step": pd.Series(steps, dtype="int64"), "loss": pd.Series(values, dtype="float64"),
                         "curve": pd.Series(names, dtype="str")})


def auto_split(text: str):
    """T changed: fill T_a and T_b from the rule-based split, or say why it could not."""
    if not (text or "").strip():
        return gr.update(), gr.update(), ""
    try:
        subject, background = split_text(text)
    except ValueError as exc:
        return gr.update(), gr.update(), f"*{exc}*"
    return subject, background, ""


def build(runner) -> None:
    D = runner.defaults(LD)
    gr.Markdown("Change what a subject does and where it is, together (Li et al., *LayerDiffusion*, 2023).")
    with gr.Row():
        with gr.Column():
            region = mask_editor(runner, "layer_diffusion",
                                 label="Photo: paint or select the subject, or leave it empty to find it by its name")
            text = gr.Textbox(label="Target text", placeholder="a dog jumping in a forest", elem_id="ld-text")
            with gr.Row():
                subject = gr.Textbox(label="Subject part (T_a, editable)", placeholder="a dog jumping",
                                     elem_id="ld-subject")
                background = gr.Textbox(label="Background part (T_b, editable)", placeholder="in a forest",
                                        elem_id="ld-background")
            split_note = gr.Markdown("", elem_id="ld-split-note")
            keep = gr.Checkbox(False, label="Keep the photo's background (change only the subject, in place)",
                               elem_id="ld-keep")
            with gr.Accordion("Reference background (optional; empty: generated from the background part)",
                              open=False):
                ref_region = mask_editor(runner, "layer_diffusion_ref",
                                         label="Reference: paint or select its subject if it shows one")
            alpha = gr.Slider(0.0, 1.0, value=0.7, step=0.05, label="alpha (subject share of e_opt, Eq. 3)",
                              elem_id="ld-alpha")
            lambda1 = gr.Slider(0.0, 10.0, value=2.0, step=0.1, label="lambda1 (subject loss weight, Eq. 6)",
                                elem_id="ld-lambda1")
            lambda2 = gr.Slider(0.0, 10.0, value=1.0, step=0.1, label="lambda2 (background loss weight, Eq. 6)",
                                elem_id="ld-lambda2")
            num_results = gr.Slider(1, 4, value=1, step=1, label="Results")
            with gr.Accordion("Advanced", open=False):
                embed_steps = gr.Slider(1, LD.MAX_EMBED_STEPS, value=D["embed_steps"], step=1,
                                        label="Embedding optimisation steps (Eq. 2, lr 1e-3)")
                tune_steps = gr.Slider(1, LD.MAX_TUNE_STEPS, value=D["tune_steps"], step=1, label="Fine-tuning steps (Eq. 4-6)")
                steps = gr.Slider(1, LD.MAX_STEPS, value=D["steps"], step=1, label="Sampling steps (iterative guidance, Eq. 8)")
                lora_rank = gr.Slider(1, 64, value=4, step=1, label="LoRA rank")
                full = gr.Checkbox(False, label="Full fine-tune (a private copy of the whole UNet; large GPUs only)")
                cfg = gr.Slider(1.0, 20.0, value=7.5, step=0.5, label="Guidance scale (CFG)")
                resolution = gr.Slider(64, 1024, value=D["resolution"], step=64, label="Resolution (longest side)")
                C.quick_defaults_note(runner, LD)
            seed = C.seed_row()
        with gr.Column():
            button, stop = C.run_buttons("ld", runner=runner)
            panel = C.result_panel()
            losses = gr.LinePlot(loss_table({}), x="step", y="loss", color="curve", label="Losses",
                                 title="Optimisation losses per step", height=260, elem_id="ld-losses")

    text.change(auto_split, text, [subject, background, split_note], api_name="layer_diffusion_split",
                queue=False)

    def edit(editor, grow, feather, invert, whole, text, subject, background, keep,
             ref_editor, ref_grow, ref_feather, ref_invert, ref_whole, alpha, lambda1, lambda2, num_results,
             embed_steps, tune_steps, steps, lora_rank, full, cfg, resolution, seed,
             request: gr.Request, progress=gr.Progress()):
        image, mask = resolve_mask(editor, grow, feather, invert, whole, required=False)
        if image is None:
            raise gr.Error("Upload a photo first.", title="Please check the input", print_exception=False)
        ref, ref_mask = resolve_mask(ref_editor, ref_grow, ref_feather, ref_invert, ref_whole, required=False)
        inputs = LD.LayerDiffusionInputs(
            image=image, text=text or "", subject_text=subject or None, background_text=background or None,
            reference=ref, keep_background=bool(keep), subject_mask=mask, reference_mask=ref_mask, alpha=alpha,
            lambda1=lambda1, lambda2=lambda2, embed_steps=embed_steps, tune_steps=tune_steps, steps=steps,
            lora_rank=lora_rank, full_finetune=bool(full), num_results=num_results, cfg=cfg, seed=seed,
            resolution=int(resolution) if resolution is not None else 512)
        result = runner.run(LD, inputs, request=request, progress=progress)
        return (*C.present(result, image), loss_table(result.curves))

    def restore_reference(settings, images):
        """History: the reference background the saved edit used (and its subject mask), or none."""
        reference = images.get("reference")
        return [None if reference is None else C.editor_value(reference, images.get("reference_mask"))]

    C.restorable(runner, LD.NAME, __name__, {
        "text": text, "subject_text": subject, "background_text": background, "keep_background": keep,
        "alpha": alpha, "lambda1": lambda1, "lambda2": lambda2, "num_results": num_results,
        "embed_steps": embed_steps, "tune_steps": tune_steps, "steps": steps, "lora_rank": lora_rank,
        "full_finetune": full, "cfg": cfg, "resolution": resolution, "seed": seed}, editor=region.editor,
        extra_outputs=[ref_region.editor], extra=restore_reference)
    event = button.click(edit, [*region.inputs, text, subject, background, keep, *ref_region.inputs, alpha, lambda1, lambda2,
                                num_results, embed_steps, tune_steps, steps, lora_rank, full, cfg, resolution, seed],
                         [*panel.outputs, losses], api_name=API_NAME, concurrency_id="gpu",
                         show_progress_on=[panel.compare])

    C.wire_stop(runner, stop, event, api_name="layer_diffusion_stop")
    C.how_it_works('The text is split into the subject part and the background part; the background comes from a reference image, the photo itself, or an image generated from the background text. The method fine-tunes per photo (embeddings, then LoRA adapters), so it is the slowest tab: the progress bar covers every stage with the time left, and **Stop** ends the run cleanly.')
    gr.Examples([[C.example("cat.png"), "a cat sitting on a beach", 0.7],
                 [C.example("astronaut.png"), "an astronaut standing on the moon", 0.7]],
                [region.editor, text, alpha], label="Examples")

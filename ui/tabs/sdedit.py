"""SDEdit tab: the baseline. Widgets -> SDEditInputs -> engine; no maths here."""
from __future__ import annotations

import gradio as gr

from engine.methods import sdedit
from ui import components as C
from ui.mask_editor import mask_editor, resolve_mask

TITLE = "SDEdit (baseline)"
ORDER = 0
API_NAME = "sdedit"


def build(runner) -> None:
    D = runner.defaults(sdedit)
    gr.Markdown("Noise the photo part-way and denoise it towards the prompt (Meng et al., *SDEdit*, 2022). "
                "Paint or select a region to change only that region; select nothing to edit the whole photo.")
    with gr.Row():
        with gr.Column():
            region = mask_editor(runner, "sdedit", label="Photo: paint or select the region to edit "
                                                          "(nothing selected: the whole photo)")
            photo = region.editor  # elem_id "sdedit-photo"
            prompt = gr.Textbox(label="Prompt", placeholder="a photo of a dog", elem_id="sdedit-prompt")
            strength = gr.Slider(0.05, 1.0, value=0.7, step=0.05, label="Strength (how far to noise the photo)")
            num_results = gr.Slider(1, 4, value=1, step=1, label="Results")
            with gr.Accordion("Advanced", open=False):
                steps = gr.Slider(1, 200, value=D["steps"], step=1, label="DDIM steps")
                cfg = gr.Slider(1.0, 20.0, value=7.5, step=0.5, label="Guidance scale (CFG)")
                negative = gr.Textbox(label="Negative prompt", value="")
                resolution = gr.Slider(64, 1024, value=D["resolution"], step=64, label="Resolution (longest side)")
                C.quick_defaults_note(runner, sdedit)
            seed = C.seed_row()
        with gr.Column():
            button, stop = C.run_buttons("sdedit", runner=runner)
            panel = C.result_panel()

    def edit(editor, grow, feather, invert, whole_image, prompt, strength, steps, cfg, num_results, negative,
             resolution, seed, request: gr.Request, progress=gr.Progress()):
        image, mask = resolve_mask(editor, grow, feather, invert, whole_image)
        if image is None:
            raise gr.Error("Upload a photo first.", print_exception=False)
        inputs = sdedit.SDEditInputs(image=image, prompt=prompt, strength=strength, steps=steps, cfg=cfg,
                                     num_results=num_results, negative_prompt=negative, seed=seed, mask=mask,
                                     resolution=int(resolution) if resolution is not None else 512)
        result = runner.run(sdedit, inputs, request=request, progress=progress)
        return C.present(result, image)

    C.restorable(runner, sdedit.NAME, __name__, {
        "prompt": prompt, "strength": strength, "steps": steps, "cfg": cfg, "num_results": num_results,
        "negative_prompt": negative, "resolution": resolution, "seed": seed}, editor=region.editor)
    event = button.click(edit, region.inputs + [prompt, strength, steps, cfg, num_results, negative, resolution, seed],
                 panel.outputs, api_name=API_NAME, concurrency_id="gpu", show_progress_on=[panel.compare])
    C.wire_stop(runner, stop, event, api_name=f"{API_NAME}_stop")
    C.how_it_works("The photo is noised to the strength's level and denoised towards the prompt with DDIM; with a region selected, the latents outside it are replaced by the photo's, noised to the same level, at every step.")
    gr.Examples([[C.example("cat.png"), "a photo of a tiger", 0.7],
                 [C.example("coffee.png"), "a cup of green tea on a wooden table", 0.6]],
                [photo, prompt, strength], label="Examples")

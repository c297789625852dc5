"""pix2pix-zero tab: prompt-free edits along a direction. Widgets -> Pix2PixZeroInputs -> engine;
no maths here. Moving the guidance slider or picking another direction for the same photo reuses
the engine's cached inversion, so only the edit runs again."""
from __future__ import annotations

import gradio as gr

from engine.methods import p2pz_directions as directions
from engine.methods import pix2pix_zero
from ui import components as C

TITLE = "pix2pix-zero"
ORDER = 1
API_NAME = "pix2pix_zero"
CAPTION_API_NAME = "pix2pix_zero_caption"

SENTENCES_HINT = "One sentence a line. Leave empty to use 60 template sentences around the word."


def words_for(label: str):
    """A ready direction's label -> the two word boxes."""
    source, target = directions.parse_label(label)
    return source, target


def build(runner) -> None:
    D = runner.defaults(pix2pix_zero)
    gr.Markdown("Edit along a direction such as *cat → dog* without writing a prompt (Parmar et al., "
                "*Zero-shot Image-to-Image Translation*, 2023).")
    with gr.Row():
        with gr.Column():
            photo = gr.Image(label="Photo", type="pil", sources=("upload", "clipboard"), height=320,
                             elem_id="p2pz-photo")
            with gr.Row(equal_height=True):  # the direction first: it is the edit
                ready = gr.Dropdown(directions.ready_labels(), value=directions.ready_labels()[0], scale=2,
                                    label="Ready directions (fill the words)", elem_id="p2pz-direction")
                source = gr.Textbox(label="Source word", value="cat", elem_id="p2pz-source", scale=1)
                target = gr.Textbox(label="Target word", value="dog", elem_id="p2pz-target", scale=1)
            with gr.Row(equal_height=True):
                caption = gr.Textbox(label="Caption (written by BLIP when a photo arrives; editable)",
                                     placeholder="a cat sitting on a sofa", scale=4, elem_id="p2pz-caption")
                caption_button = gr.Button("Caption", scale=1, size="sm", elem_id="p2pz-caption-run")
            with gr.Accordion("Custom sentences (instead of the templates)", open=False):
                source_sentences = gr.Textbox(label="Source sentences", lines=4, placeholder=SENTENCES_HINT)
                target_sentences = gr.Textbox(label="Target sentences", lines=4, placeholder=SENTENCES_HINT)
            xa_guidance = gr.Slider(0.0, 0.5, value=0.1, step=0.01, elem_id="p2pz-xa",
                                    label="Cross-attention guidance λ_xa (keeps the structure; 0 = off)")
            with gr.Accordion("Advanced", open=False):
                steps = gr.Slider(10, 200, value=D["steps"], step=1, label="DDIM steps (inversion, reconstruction, edit)",
                                  elem_id="p2pz-steps")
                cfg = gr.Slider(1.0, 15.0, value=5.0, step=0.5, label="Guidance scale (CFG) of the edit")
                reg_lambda = gr.Slider(0.0, 100.0, value=20.0, step=1.0,
                                       label="Noise regularisation λ (L_auto = L_pair + λ L_KL)")
                reg_iters = gr.Slider(0, 20, value=5, step=1, label="Regularisation iterations per inversion step")
                resolution = gr.Slider(64, 1024, value=D["resolution"], step=64, label="Resolution (longest side)",
                                       elem_id="p2pz-resolution")
                C.quick_defaults_note(runner, pix2pix_zero)
            seed = C.seed_row()
        with gr.Column():
            button, stop = C.run_buttons("p2pz")
            panel = C.result_panel("Edit")
            reconstruction = gr.Image(label="Reconstruction (the inverted photo rebuilt with the caption)",
                                      type="pil", format="png", interactive=False, height=300,
                                      elem_id="p2pz-reconstruction", visible=False)  # an API output; the
            # intermediates gallery shows the reconstruction (it was on screen twice)

    def write_caption(image, resolution, request: gr.Request):
        if image is None:
            return ""
        res = int(resolution) if resolution is not None else 512
        return runner.call(lambda on_step: pix2pix_zero.auto_caption(runner.cache, image, res), request=request)

    def edit(image, caption_text, source_word, target_word, source_lines, target_lines, xa, steps, cfg,
             reg_lambda, reg_iters, resolution, seed, request: gr.Request, progress=gr.Progress()):
        if image is None:
            raise gr.Error("Upload a photo first.", print_exception=False)
        inputs = pix2pix_zero.Pix2PixZeroInputs(
            image=image, source=source_word or "", target=target_word or "", caption=caption_text or None,
            source_sentences=source_lines or None, target_sentences=target_lines or None, steps=steps,
            xa_guidance=xa, cfg=cfg, seed=seed, reg_lambda=reg_lambda, reg_iters=reg_iters,
            resolution=int(resolution) if resolution is not None else 512)
        result = runner.run(pix2pix_zero, inputs, request=request, progress=progress)
        return (*C.present(result, image), result.intermediates.get("reconstruction"), result.params["caption"])

    ready.change(words_for, ready, [source, target], api_name=False, queue=False)
    photo.upload(write_caption, [photo, resolution], caption, api_name=False, concurrency_id="gpu")
    photo.clear(lambda: "", None, caption, api_name=False, queue=False)
    caption_button.click(write_caption, [photo, resolution], caption, api_name=CAPTION_API_NAME,
                         concurrency_id="gpu")
    C.restorable(runner, pix2pix_zero.NAME, __name__, {
        "caption": caption, "source": source, "target": target, "xa_guidance": xa_guidance, "steps": steps,
        "cfg": cfg, "reg_lambda": reg_lambda, "reg_iters": reg_iters, "resolution": resolution, "seed": seed},
        editor=photo)
    event = button.click(edit, [photo, caption, source, target, source_sentences, target_sentences, xa_guidance, steps, cfg,
                        reg_lambda, reg_iters, resolution, seed],
                 [*panel.outputs, reconstruction, caption], api_name=API_NAME, concurrency_id="gpu",
                         show_progress_on=[panel.compare])
    C.wire_stop(runner, stop, event, api_name=f"{API_NAME}_stop")
    C.how_it_works("The photo is captioned, inverted to noise with the paper's noise regularisation and rebuilt; the edit follows the direction (the mean text embedding of sentences about the target minus those about the source) while cross-attention guidance keeps the rebuilt photo's layout. Changing the guidance or the direction reuses the inversion.")
    gr.Examples([[C.example("cat.png"), "", "cat → dog", 0.1],
                 [C.example("cat.png"), "", "cat → cat wearing sunglasses", 0.1],
                 [C.example("coffee.png"), "", "photo → watercolor painting", 0.05]],
                [photo, caption, ready, xa_guidance], label="Examples")

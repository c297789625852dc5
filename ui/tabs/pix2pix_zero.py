"""pix2pix-zero tab: prompt-free edits along a direction. Widgets -> Pix2PixZeroInputs -> engine;
no maths here. Moving the guidance slider or picking another direction for the same photo reuses
the engine's cached inversion, so only the edit runs again.

Its second mode, "Fast (distilled)", applies a direction distilled into a GAN (Sec. 4.5;
engine.methods.pix2pix_zero_fast): one found in the app's distilled folder (--distilled,
$DES_DISTILLED_DIR) or a typed checkpoint folder, to the photo (with the time it took) or live to
webcam frames. The photo and the result panel are shared by both modes."""
from __future__ import annotations

import gradio as gr

from engine.methods import p2pz_directions as directions
from engine.methods import pix2pix_zero
from engine.methods import pix2pix_zero_fast as fast
from engine.methods.p2pz_generator import list_checkpoints
from ui import components as C

TITLE = "pix2pix-zero"
ORDER = 1
API_NAME = "pix2pix_zero"
CAPTION_API_NAME = "pix2pix_zero_caption"
FAST_API_NAME = "pix2pix_zero_fast"
STREAM_API_NAME = "pix2pix_zero_fast_stream"
LIST_API_NAME = "pix2pix_zero_fast_list"
MODES = ("Diffusion (full)", "Fast (distilled)")

SENTENCES_HINT = "One sentence a line. Leave empty to use 60 template sentences around the word."


def words_for(label: str):
    """A ready direction's label -> the two word boxes."""
    source, target = directions.parse_label(label)
    return source, target


def distilled_choices(folder) -> list[tuple[str, str]]:
    """(label, checkpoint folder) of every readable distilled direction in `folder`."""
    return [(fast.describe(path, meta), str(path)) for path, meta in list_checkpoints(folder)]


def folder_note(folder, count: int) -> str:
    found = f"{count} direction{'s' if count != 1 else ''} found" if count else "No direction found yet"
    return (f"{found} in `{folder}`. Each is one direction distilled into a GAN (the paper's Sec. 4.5): an "
            "edit takes milliseconds, no caption or settings. Train one with `python -m engine.train.p2pz_distill` "
            "(README, *Fast pix2pix-zero*).")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def fast_time_text(result) -> str:
    """'Edited in **12 ms** · 96x64 px · cat → dog' (and the load time on a first use)."""
    s, p = result.seconds, result.params
    text = (f"Edited in **{_ms(s['edit'])}** · {p['size'][0]}x{p['size'][1]} px · "
            f"{p['direction']['source']} → {p['direction']['target']}")
    if not p.get("loaded_from_cache"):
        text += f" · loading the generator (first use): {_ms(s['load'])}"
    return text


def build(runner) -> None:
    D = runner.defaults(pix2pix_zero)
    folder = getattr(runner, "distilled", None) or fast.distilled_folder()
    choices = distilled_choices(folder)
    with gr.Row(equal_height=True):
        gr.Markdown("Edit along a direction such as *cat → dog* without writing a prompt (Parmar et al., "
                    "*Zero-shot Image-to-Image Translation*, 2023).")
        mode = gr.Radio(list(MODES), value=MODES[0], show_label=False, container=False, elem_id="p2pz-mode")
    with gr.Row():
        with gr.Column():
            photo = gr.Image(label="Photo", type="pil", sources=("upload", "clipboard"), height=320,
                             elem_id="p2pz-photo")
            with gr.Column(visible=False, elem_id="p2pz-fast-controls") as fast_controls:
                fast_pick = gr.Dropdown(choices, value=choices[0][1] if choices else None,
                                        allow_custom_value=True, elem_id="p2pz-fast-direction",
                                        label="Distilled direction (or type a checkpoint folder)")
                with gr.Row():
                    fast_folder = gr.Markdown(folder_note(folder, len(choices)), elem_id="p2pz-fast-folder",
                                              elem_classes=["quick-defaults"])
                    rescan = gr.Button("Rescan the folder", size="sm", scale=0, min_width=150,
                                       elem_id="p2pz-fast-rescan")
                with gr.Accordion("Live webcam: each frame edited (where the browser allows the camera)",
                                  open=False, elem_id="p2pz-webcam-box"):
                    with gr.Row():
                        webcam = gr.Image(sources=["webcam"], streaming=True, type="pil", label="Webcam",
                                          elem_id="p2pz-webcam", height=240)
                        live = gr.Image(label="Live edit", type="pil", interactive=False, elem_id="p2pz-live",
                                        height=240)
                    live_time = gr.Markdown("", elem_id="p2pz-live-time")
            with gr.Column(elem_id="p2pz-full-controls") as full_controls:
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
            button, stop = C.run_buttons("p2pz", runner=runner)
            fast_button = gr.Button("Apply distilled edit", variant="primary", visible=False,
                                    elem_id="p2pz-fast-run")
            fast_time = gr.Markdown("", elem_id="p2pz-fast-time")
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
    def caption_on_upload(image, resolution, chosen, request: gr.Request):
        if chosen == MODES[1]:  # the fast mode needs no caption; BLIP would hold the queue before Apply
            return gr.update()
        return write_caption(image, resolution, request)

    photo.upload(caption_on_upload, [photo, resolution, mode], caption, api_name=False, concurrency_id="gpu")
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

    # -- fast (distilled) mode ------------------------------------------------------------------
    def rescan_folder(current):
        if current is not None and not isinstance(current, str):
            raise gr.Error(f"the current direction must be text (a checkpoint folder), got {type(current).__name__}",
                           print_exception=False)
        found = distilled_choices(folder)
        keep = current if current and (current in {v for _, v in found} or not found) else None
        value = keep or (found[0][1] if found else None)
        return gr.Dropdown(choices=found, value=value), folder_note(folder, len(found))

    def switch(chosen, current):
        is_fast = chosen == MODES[1]
        shown = [gr.update(visible=is_fast), gr.update(visible=not is_fast), gr.update(visible=not is_fast),
                 gr.update(visible=not is_fast), gr.update(visible=is_fast)]
        listing = rescan_folder(current) if is_fast else (gr.update(), gr.update())
        return (*shown, *listing)

    def fast_edit(image, checkpoint, request: gr.Request, progress=gr.Progress()):
        if image is None:
            raise gr.Error("Upload a photo first.", print_exception=False)
        result = runner.run(fast, fast.Pix2PixZeroFastInputs(image=image, checkpoint=checkpoint or ""),
                            request=request, progress=progress)
        return (*C.present(result, image), fast_time_text(result))

    def stream_frame(frame, checkpoint):
        """One webcam frame -> its edit and the time it took. Outside the runner's one-edit-at-a-time
        lock: a frame is milliseconds and must not wait minutes behind a diffusion edit."""
        if frame is None:
            return None, ""
        try:
            result = fast.run(fast.Pix2PixZeroFastInputs(image=frame, checkpoint=checkpoint or ""), runner.cache)
        except ValueError as exc:
            raise gr.Error(str(exc), title="Please check the input", print_exception=False) from None
        return result.image, f"{_ms(result.seconds['edit'])} per frame"

    mode.change(switch, [mode, fast_pick], [fast_controls, full_controls, button, stop, fast_button, fast_pick,
                                             fast_folder], api_name=False, queue=False)
    rescan.click(rescan_folder, fast_pick, [fast_pick, fast_folder], api_name=LIST_API_NAME, queue=False)
    fast_button.click(fast_edit, [photo, fast_pick], [*panel.outputs, fast_time], api_name=FAST_API_NAME,
                      concurrency_id="gpu", show_progress_on=[panel.compare])
    webcam.stream(stream_frame, [webcam, fast_pick], [live, live_time], api_name=STREAM_API_NAME,
                  stream_every=0.1, time_limit=300, concurrency_limit=2, concurrency_id="p2pz-fast-stream",
                  show_progress="hidden", api_visibility="undocumented")  # the page's stream, not an API
    # History: a fast result reopens this tab in the fast mode with its checkpoint and photo. The photo
    # goes through a hidden relay: the diffusion mode's target already restores `photo`, and one
    # component listed twice among History's outputs gets the second (empty) update.
    restored_photo = gr.Image(type="pil", visible=False, elem_id="p2pz-fast-restored-photo")
    restored_photo.change(lambda image: image, restored_photo, photo, api_name=False, queue=False)
    C.restorable(runner, fast.NAME, __name__, {"checkpoint": fast_pick}, extra_outputs=[mode, restored_photo],
                 extra=lambda settings, images: [MODES[1], images.get("image")])
    C.how_it_works("The photo is captioned, inverted to noise with the paper's noise regularisation and rebuilt; the edit follows the direction (the mean text embedding of sentences about the target minus those about the source) while cross-attention guidance keeps the rebuilt photo's layout. Changing the guidance or the direction reuses the inversion.")
    gr.Examples([[C.example("cat.png"), "", "cat → dog", 0.1],
                 [C.example("cat.png"), "", "cat → cat wearing sunglasses", 0.1],
                 [C.example("coffee.png"), "", "photo → watercolor painting", 0.05]],
                [photo, caption, ready, xa_guidance], label="Examples")

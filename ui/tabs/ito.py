"""ITO tab: edit a photo by text, scribble or pose (any combination). Widgets -> ITOInputs ->
engine; no maths here. When a photo arrives, `ito.prepare` fills the caption, the scribble canvas
(the photo's scribble over a faded copy of it) and the pose editor (the detected or default
skeleton); the user edits any of them, ticks which conditions to use and runs the edit."""
from __future__ import annotations

import gradio as gr

from engine.core.image import image_hash, load_image
from engine.core.ito_inputs import canvas_images, pose_json_text, read_pose, read_scribble
from engine.methods import ito
from ui import components as C
from ui.mask_editor import mask_editor, read_editor, resolve_mask
from ui.pose_editor import editor_value, pose_editor

TITLE = "ITO (text, scribble, pose)"
ORDER = 2
API_NAME = "ito"
PREPARE_API_NAME = "ito_prepare"
CONDITIONS = ("Text", "Scribble", "Pose")
MASK_MODES = {"replace the estimated mask": "replace", "add to the estimated mask": "add"}
POSE_NOTE = "A default skeleton: drag it into place."  # short: a long note wraps and moves the canvas
STROKE = "#1e40ff"  # engine.core.ito_inputs.STROKE_RGB; any opaque pixel of the layer is a stroke
def build(runner) -> None:
    D = runner.defaults(ito)  # the paper's, or the tiny profile's quick ones (engine/profile_defaults.py)
    gr.Markdown("Edit by **text**, **scribble** or **pose**, or several at once, and keep the rest of the photo "
                "(*Optimisation-based multi-modal semantic image editing*).")
    with gr.Row():
        with gr.Column():
            region = mask_editor(runner, "ito", label="Photo (optional: paint a region to force into the edit mask)",
                                 height=270)  # the text, scribble and pose editors below need the room
            notes = gr.Markdown("", elem_id="ito-notes")
            conditions = gr.CheckboxGroup(list(CONDITIONS), value=["Text"], label="Edit with",
                                          elem_id="ito-conditions", container=False)
            with gr.Tabs():
                with gr.Tab("Text"), gr.Row(equal_height=True):
                    caption = gr.Textbox(label="Caption of the photo (C_0, by BLIP)",
                                         elem_id="ito-caption")
                    prompt = gr.Textbox(label="Edit prompt (C_EDIT: change some words)",
                                        elem_id="ito-prompt")
                with gr.Tab("Scribble"):
                    scribble = gr.ImageEditor(
                        label="Scribble: erase and draw strokes (brush size in the toolbar)", type="pil",
                        image_mode="RGBA", sources=(), format="png", layers=False, transforms=(), height=420,
                        canvas_size=(64, 64),  # 6.31 centres a Python-set layer in the initial canvas: keep it small
                        brush=gr.Brush(colors=[STROKE], color_mode="fixed", default_size=6),
                        eraser=gr.Eraser(default_size=12), elem_id="ito-scribble")
                    scribble_source = gr.Image(type="pil", visible=False, format="png", label="The photo's scribble")
                with gr.Tab("Pose"):
                    pose = pose_editor("Pose: drag the joints", elem_id="ito-pose")
                    pose_source = gr.Textbox(visible=False, label="The photo's pose (OpenPose JSON)")
            lam = gr.Slider(0.0, 1.0, value=D["lam"], step=0.05, elem_id="ito-lambda",
                            label="lambda: guidance (0) <-> preservation (1); 1 skips the guidance image")
            mask_mode = gr.Radio(list(MASK_MODES), value=next(iter(MASK_MODES)), elem_id="ito-mask-mode",
                                 label="A painted or selected mask...")
            with gr.Accordion("Advanced", open=False):
                t_u = gr.Slider(0, 50, value=D["t_u"], step=1, elem_id="ito-tu",
                                label="t_u: optimise during the first steps")
                k = gr.Slider(0, 50, value=D["k"], step=1, elem_id="ito-k", label="k: Adam steps per update")
                lr = gr.Slider(0.001, 1.0, value=D["lr"], step=0.001, elem_id="ito-lr",
                               label="Learning rate (gamma)")
                encode_ratio = gr.Slider(0.05, 1.0, value=D["encode_ratio"], step=0.05,
                                         elem_id="ito-encode-ratio", label="Encoding ratio (t_E / T)")
                tau = gr.Slider(0.0, 0.95, value=D["tau"], step=0.01, elem_id="ito-tau",
                                label="Mask threshold tau")
                mask_seeds = gr.Slider(1, 32, value=D["mask_seeds"], step=1, elem_id="ito-seeds",
                                       label="Mask seeds n")
                mask_ratio = gr.Slider(0.05, 1.0, value=D["mask_encode_ratio"], step=0.05,
                                       elem_id="ito-mask-ratio", label="Mask encoding ratio",
                                       info="how far each mask seed is noised before denoising (DiffEdit's 0.5)")
                steps = gr.Slider(2, 100, value=D["steps"], step=1, elem_id="ito-steps", label="DDIM steps")
                cfg = gr.Slider(1.0, 20.0, value=D["cfg"], step=0.5, elem_id="ito-cfg",
                                label="Guidance scale (CFG)")
                control_scale = gr.Slider(0.0, 2.0, value=D["control_scale"], step=0.05,
                                          elem_id="ito-control-scale", label="ControlNet scale")
                resolution = gr.Slider(64, 1024, value=D["resolution"], step=64, elem_id="ito-resolution",
                                       label="Resolution (longest side)",
                                       info="set it before the photo: the scribble and pose are read at this size")
                C.quick_defaults_note(runner, ito)
            seed = C.seed_row()
            reread = gr.Button("Reset scribble, pose and caption from the photo", size="sm",
                               elem_id="ito-reread")
        with gr.Column():
            button, stop = C.run_buttons("ito", runner=runner)
            # The mask, the guidance image and the edit stay outputs of the API (clients read them by
            # position) but are not shown twice: the panel's before/after and intermediates show them.
            with gr.Row(equal_height=True, visible=False):
                shown = dict(type="pil", format="png", interactive=False, height=240)
                mask_out = gr.Image(label="Estimated mask", elem_id="ito-mask", **shown)
                guidance_out = gr.Image(label="Guidance image", elem_id="ito-guidance", **shown)
                edit_out = gr.Image(label="Final edit", elem_id="ito-edit", **shown)
            panel = C.result_panel()

    loaded = gr.Textbox(visible=False, label="The photo the editors were filled from")
    restored_key = gr.State("")  # the photo a History restore filled the editors for (not to re-read)
    prepared_outputs = [caption, prompt, scribble, scribble_source, *pose.outputs, pose_source, notes]

    def prepare(editor, resolution, request: gr.Request, progress=gr.Progress()):
        photo, _ = read_editor(editor)
        if photo is None:
            return "", "", None, None, editor_value(None), "", "", ""
        p = runner.call(ito.prepare, runner.cache, photo, int(resolution or 512), request=request, progress=progress)
        background, layer = canvas_images(p.image, p.scribble)
        canvas = {"background": background, "layers": [layer], "composite": None}  # a composite would hide erasing
        note_text = "\n".join(f"- {n}" for n in p.notes)
        shown_pose = editor_value(p.pose, p.image, POSE_NOTE if p.pose_note else None)
        pose_text = pose_json_text(p.pose)
        return p.caption, p.caption, canvas, p.scribble, shown_pose, pose_text, pose_text, note_text

    def photo_key(editor, resolution) -> str:
        """Which photo (and size) the editors hold: the hidden `loaded` box changes only for a new one."""
        photo, _ = read_editor(editor)
        return "" if photo is None else f"{image_hash(photo)}@{int(resolution or 512)}"

    def edit(editor, grow, feather, invert, whole, mask_mode, conditions, caption, prompt, scribble, scribble_source,
             pose_json, pose_source, lam, t_u, k, lr, encode_ratio, tau, mask_seeds, mask_ratio, steps, cfg,
             control_scale, resolution, seed, request: gr.Request, progress=gr.Progress()):
        photo, mask = resolve_mask(editor, grow, feather, invert, whole)
        if photo is None:
            raise gr.Error("Upload a photo first.", title="Please check the input", print_exception=False)
        use = set(conditions or [])
        layer = None
        if "Scribble" in use:
            layers = scribble.get("layers") if isinstance(scribble, dict) else None
            if not layers:
                raise gr.Error("The scribble canvas is empty: upload the photo again to get its scribble.",
                               title="Please check the input", print_exception=False)
            layer = layers[0]
        if "Pose" in use and not (pose_json or "").strip():
            raise gr.Error("The pose editor holds no pose: upload the photo again.", title="Please check the input",
                           print_exception=False)
        inputs = ito.ITOInputs(
            image=photo, prompt=(prompt or None) if "Text" in use else None, caption=caption or None,
            scribble=layer, scribble_source=scribble_source if layer is not None else None,
            pose=pose_json if "Pose" in use else None, pose_source=(pose_source or None) if "Pose" in use else None,
            mask=mask, mask_mode=MASK_MODES.get(mask_mode, mask_mode), lam=lam, steps=steps, t_u=t_u, k=k, lr=lr,
            encode_ratio=encode_ratio, tau=tau, mask_seeds=mask_seeds, mask_encode_ratio=mask_ratio, cfg=cfg,
            control_scale=control_scale, seed=seed, resolution=int(resolution) if resolution is not None else 512)
        result = runner.run(ito, inputs, request=request, progress=progress)
        return (ito.mask_overlay(photo, result), result.intermediates.get("guidance"), result.image,
                *C.present(result, photo), result.params["caption"])

    # Gradio 6.31's ImageEditor fires "upload" again whenever it re-mounts with a value (twice per file,
    # and later on unrelated layout changes). Preparing again would wipe the user's strokes and pose
    # edits, so the upload only records which photo it is; a new photo changes `loaded`, which prepares.
    region.editor.upload(photo_key, [region.editor, resolution], loaded, api_name=False, queue=False,
                         show_progress="hidden")
    region.editor.clear(lambda: "", None, loaded, api_name=False, queue=False, show_progress="hidden")

    def prepare_new(editor, resolution, key, restored, request: gr.Request, progress=gr.Progress()):
        """A new photo fills the editors, unless History has just filled them for this very photo
        (once: the mark is cleared, so the same photo uploaded again later is read as usual)."""
        if key and key == restored:
            return *[gr.update()] * len(prepared_outputs), ""
        return *prepare(editor, resolution, request, progress), ""

    loaded.change(prepare_new, [region.editor, resolution, loaded, restored_key], [*prepared_outputs, restored_key],
                  api_name=False, concurrency_id="gpu", show_progress_on=[notes])
    reread.click(prepare, [region.editor, resolution], prepared_outputs, api_name=PREPARE_API_NAME,
                 concurrency_id="gpu")

    def restore_conditions(settings, images):
        """History: the conditions a saved edit used (its scribble in the PNG, its poses in the
        settings), so Edit reproduces it; what it did not use is read from the photo as on upload.
        `loaded` and `restored_key` are set to the restored photo, so neither the change of `loaded`
        nor the editor's upload event re-reads it."""
        params, photo = settings.get("params") or {}, images.get("image")
        if photo is None:
            return [gr.update()] * len(restored)
        resolution = int(params.get("resolution") or 512)
        used = params.get("conditions") or []
        saved = {"scribble": images.get("scribble"), "scribble_source": images.get("scribble_source"),
                 "pose": params.get("pose"), "pose_source": params.get("pose_source")}
        own = None
        if any(value is None for value in saved.values()):
            own = runner.call(ito.prepare, runner.cache, photo, resolution, with_caption=False)
        image = own.image if own is not None else load_image(photo, resolution)
        try:
            scribble_src = (read_scribble(saved["scribble_source"], image.size, "saved scribble")
                            if saved["scribble_source"] is not None else own.scribble)
            scribble = (read_scribble(saved["scribble"], image.size, "saved scribble")
                        if saved["scribble"] is not None else scribble_src)
            pose_src = read_pose(saved["pose_source"], image.size) if saved["pose_source"] else own.pose
            pose = read_pose(saved["pose"], image.size) if saved["pose"] else pose_src
        except ValueError as exc:
            raise gr.Error(f"The saved scribble or pose does not fit the photo: {exc}",
                           title="Please check the input", print_exception=False) from None
        background, layer = canvas_images(image, scribble)
        note = "Restored from History: the saved edit's conditions are in the editors."
        key = photo_key(C.editor_value(photo, images.get("mask")), resolution)
        return ([c for c in CONDITIONS if c.lower() in used] or ["Text"],
                {"background": background, "layers": [layer], "composite": None}, scribble_src,
                editor_value(pose, image), pose_json_text(pose), pose_json_text(pose_src), note, key, key,
                next((label for label, mode in MASK_MODES.items() if mode == params.get("mask_mode")),
                     next(iter(MASK_MODES))))

    restored = [conditions, scribble, scribble_source, *pose.outputs, pose_source, notes, loaded, restored_key,
                mask_mode]
    # Saved results restore the photo, mask, texts, numbers, and the scribble and pose the edit used.
    C.restorable(runner, ito.NAME, __name__, {
        "caption": caption, "prompt": prompt, "lam": lam, "t_u": t_u, "k": k, "lr": lr, "encode_ratio": encode_ratio,
        "tau": tau, "mask_seeds": mask_seeds, "mask_encode_ratio": mask_ratio, "steps": steps, "cfg": cfg,
        "control_scale": control_scale, "resolution": resolution, "seed": seed},
        editor=region.editor, extra_outputs=restored, extra=restore_conditions)
    event = button.click(edit, [*region.inputs, mask_mode, conditions, caption, prompt, scribble, scribble_source,
                                pose.json, pose_source, lam, t_u, k, lr, encode_ratio, tau, mask_seeds, mask_ratio,
                                steps, cfg, control_scale, resolution, seed],
                         [mask_out, guidance_out, edit_out, *panel.outputs, caption], api_name=API_NAME,
                         concurrency_id="gpu", show_progress_on=[panel.compare])
    C.wire_stop(runner, stop, event, api_name=f"{API_NAME}_stop")

    # Picking an example sets the photo, which fires the editor's upload event, which prepares it.
    C.how_it_works("An edit mask is estimated from how the noise predictions differ between the photo's conditions and the edited ones (Eq. 7); a guidance image is made with preservation only, then the edit is optimised towards it (lambda, Eq. 6) while the latents outside the mask are pulled back to the photo's (Eq. 4).")
    gr.Examples([[C.example("astronaut.png")], [C.example("cat.png")], [C.example("coffee.png")]],
                [region.editor], label="Examples (its scribble, pose and caption are read when it loads)")

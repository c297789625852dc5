"""A draggable OpenPose skeleton editor for Gradio 6.31 Blocks (ITO tab).

Gradio has no pose component, so this is a ``gr.HTML`` whose ``js_on_load`` mounts
``ui/pose_editor.js``. Nothing has to be passed to the app's head (in 6.31 that is
``demo.launch(head=...)``; ``gr.Blocks`` has no ``head``): the script, and the joint/limb/colour
tables from ``engine.core.conditions`` so that Python and the browser draw the same OpenPose
image, travel in the component's own ``gr.HTML(head=...)``, which Gradio injects before
``js_on_load`` runs. ``POSE_EDITOR_HEAD`` is that same markup, for an app that wants to load
it up front with ``demo.launch(head=POSE_EDITOR_HEAD)``: optional and harmless (the script
installs itself once per page). Styles come from ``assets/pose_editor.css`` through
``css_template`` (scoped to the component). Works inside tabs that render lazily.

Usage, inside a ``gr.Blocks`` / ``gr.Tab``::

    from ui.pose_editor import pose_editor, read_pose

    photo = gr.Image(type="pil")
    editor = pose_editor("Pose")
    editor.set_from(photo, detect=my_detector)   # photo change -> detected (or default) pose
    run_btn.click(run_ito, inputs=[photo, editor.json, ...], ...)

    def run_ito(photo, pose_json, ...):
        pose = read_pose(pose_json)               # Pose | None, ValueError on bad JSON

Parts of a ``PoseEditor``:

- ``html``: the ``gr.HTML`` drawing area. Its value is a JSON string
  ``{"pose": OpenPose JSON | null, "background": data URL | null, "note": str | null, "rev": str}``
  written by ``editor_value``; the browser redraws whenever Python sends one. Users drag
  joints (mouse, pen or touch), click a joint and press "Delete joint" (or right-click /
  Alt+click it, or press Delete) to remove it and its limbs, pick a missing joint in
  "Add a missing joint" and click the photo to put it back, or "Reset" to the last pose
  Python sent. A live OpenPose preview is drawn beside the photo.
- ``json``: a hidden ``gr.Textbox`` (``elem_id`` ``<id>-json``) holding the current OpenPose
  JSON in the photo's pixel coordinates; the browser writes it (with an ``input`` event)
  after each edit, so it is the input to give the method. Use ``editor.outputs`` /
  ``editor_value`` to set a pose from Python; writing ``json`` alone does not redraw.
- ``upload`` (``gr.UploadButton``) and ``download`` (``gr.DownloadButton``): OpenPose JSON
  files, read with ``pose_from_json`` (scaled to the current photo when only the size
  differs) and written with ``pose_to_json``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import gradio as gr
from PIL import Image

from engine.core.conditions import (
    COLORS, JOINTS, LIMBS, Pose, default_pose, pose_from_json, pose_to_json,
)

_HERE = Path(__file__).resolve().parent
_JS = (_HERE / "pose_editor.js").read_text(encoding="utf-8")
_CSS = (_HERE.parent / "assets" / "pose_editor.css").read_text(encoding="utf-8")
_TABLES = json.dumps({"joints": list(JOINTS), "limbs": [list(l) for l in LIMBS], "colors": COLORS})
POSE_EDITOR_HEAD = (f"<script>window.DiffusionEditPoseTables = {_TABLES};</script>\n"
                    f"<script>\n{_JS}\n</script>")

# Static markup: Gradio re-renders the template on value changes, but an unchanged template
# leaves the DOM (and the canvases' drawings) alone. No "${", "{{" or backticks allowed here.
_TEMPLATE = """
<div class="des-pose">
  <div class="des-pose-toolbar">
    <button type="button" data-act="delete" title="Delete the selected joint and its limbs (or right-click / Alt+click a joint)">Delete joint</button>
    <select data-role="add" title="Pick a missing joint, then click the photo to place it"><option value="">Add a missing joint...</option></select>
    <button type="button" data-act="reset" title="Go back to the pose that was detected or uploaded">Reset</button>
    <span class="des-pose-status" data-role="status"></span>
  </div>
  <div class="des-pose-views">
    <figure><canvas class="des-pose-edit" data-role="edit" tabindex="0"></canvas><figcaption>Drag the joints</figcaption></figure>
    <figure><canvas class="des-pose-preview" data-role="preview"></canvas><figcaption>OpenPose preview</figcaption></figure>
  </div>
</div>
"""
_JS_ON_LOAD = "window.DiffusionEditPoseEditor.mount(element, props, watch);"
BACKGROUND_MAX_SIDE = 640  # the photo is sent to the browser at most this big (JPEG)

DetectFn = Callable[[Image.Image], "Pose | None"]


def background_url(image: Image.Image | None) -> str | None:
    """A small JPEG data URL of ``image`` for the editor's faded background."""
    if image is None:
        return None
    small = image.convert("RGB")
    small.thumbnail((BACKGROUND_MAX_SIDE, BACKGROUND_MAX_SIDE))
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def editor_value(pose: Pose | None, image: Image.Image | None = None, note: str | None = None,
                 background: str | None = None) -> str:
    """The ``html`` value that shows ``pose`` over ``image`` (or an already-encoded ``background``)."""
    return json.dumps({
        "pose": pose_to_json(pose) if pose is not None else None,
        "background": background if background is not None else background_url(image),
        "note": note,
        "rev": uuid.uuid4().hex[:8],  # a new value each time, so the browser always redraws
    })


def read_pose(text: str | None, expect_size: tuple[int, int] | None = None) -> Pose | None:
    """The ``Pose`` in the editor's ``json`` textbox (None when empty); ``ValueError`` if bad."""
    if not text or not text.strip():
        return None
    return pose_from_json(text, expect_size=expect_size)


def pose_for_image(image: Image.Image | None, detect: DetectFn | None = None) -> tuple[str, str]:
    """Values for ``(html, json)`` after a photo change: its detected pose, else a default one."""
    if image is None:
        return editor_value(None), ""
    pose, note = None, None
    if detect is None:
        note = "No pose detector weights: showing a default skeleton to drag into place."
    else:
        try:
            pose = detect(image)
        except Exception as exc:  # weights missing or broken: say so, keep editing possible
            note = f"Pose detection failed ({exc}); showing a default skeleton."
        else:
            if pose is None:
                note = "No person found in the photo: showing a default skeleton to drag into place."
    if pose is None:
        pose = default_pose(*image.size)
    return editor_value(pose, image, note), json.dumps(pose_to_json(pose))


def load_uploaded_pose(path: str | None, current: str | None) -> tuple[str, str]:
    """Values for ``(html, json)`` from an uploaded OpenPose JSON file (kept photo, scaled pose)."""
    if not path:
        raise gr.Error("No file was uploaded.", print_exception=False)
    try:
        state = json.loads(current) if current else {}
    except ValueError:
        state = None
    if not isinstance(state, dict):  # the editor's own value; only a hand-made API call gets here
        raise gr.Error("The pose editor's state could not be read (expected its JSON value); reload the page.",
                       print_exception=False)
    size = None
    if state.get("pose"):
        size = (state["pose"]["canvas_width"], state["pose"]["canvas_height"])
    try:
        text = Path(path).read_text(encoding="utf-8")
        pose = pose_from_json(text, expect_size=size)
    except (ValueError, UnicodeDecodeError) as exc:
        raise gr.Error(f"Could not use this pose file: {exc}", print_exception=False) from None
    value = editor_value(pose, note="Pose loaded from the uploaded JSON.",
                         background=state.get("background") or "")
    return value, json.dumps(pose_to_json(pose))


def pose_json_file(text: str | None) -> str | None:
    """Write the textbox's pose to ``pose.json`` for the download button (None if no valid pose)."""
    try:
        pose = read_pose(text)
    except ValueError:
        return None
    if pose is None:
        return None
    data = json.dumps(pose_to_json(pose), indent=1)
    folder = Path(tempfile.gettempdir()) / "des_pose" / hashlib.sha1(data.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pose.json").write_text(data, encoding="utf-8")
    return str(folder / "pose.json")


@dataclass
class PoseEditor:
    """The components of one pose editor (see the module docstring)."""

    html: gr.HTML
    json: gr.Textbox
    upload: gr.UploadButton
    download: gr.DownloadButton

    @property
    def outputs(self) -> list:
        """``[html, json]``: return ``editor_value(...)`` and the pose JSON to set a pose."""
        return [self.html, self.json]

    def set_from(self, image: gr.components.Component, detect: DetectFn | None = None) -> None:
        """When ``image`` (a ``gr.Image(type="pil")``) changes, show it with its detected pose.

        ``detect(image) -> Pose | None`` (e.g. ``conditions.detect_pose`` bound to a loaded
        detector); without one, or when it finds nobody, a default standing skeleton is used
        and the editor says so.
        """
        image.change(lambda img: pose_for_image(img, detect), inputs=image, outputs=self.outputs,
                     queue=False, show_progress="hidden")


def pose_editor(label: str = "Pose", pose: Pose | None = None, image: Image.Image | None = None,
                elem_id: str | None = None) -> PoseEditor:
    """Create the editor inside the current Blocks context, optionally showing ``pose`` over ``image``."""
    base = elem_id or f"pose-editor-{uuid.uuid4().hex[:8]}"
    initial_json = json.dumps(pose_to_json(pose)) if pose is not None else ""
    with gr.Column(elem_id=base):  # (in a gr.Group, 6.31 draws a heavy border round gr.HTML)
        html = gr.HTML(
            editor_value(pose, image), label=label, show_label=True, container=True, padding=True,
            html_template=_TEMPLATE, css_template=_CSS, js_on_load=_JS_ON_LOAD,
            head=POSE_EDITOR_HEAD, elem_id=f"{base}-canvas", json_elem_id=f"{base}-json",
        )
        with gr.Row():
            upload = gr.UploadButton("Upload pose JSON", file_types=[".json"], size="sm",
                                     elem_id=f"{base}-upload")
            download = gr.DownloadButton("Download pose JSON", value=pose_json_file(initial_json),
                                         size="sm", elem_id=f"{base}-download")
        text = gr.Textbox(initial_json, visible="hidden", elem_id=f"{base}-json", label=f"{label} JSON")
    editor = PoseEditor(html=html, json=text, upload=upload, download=download)
    def on_upload(path, current):  # the file to download comes in the same reply, with no race
        value, text = load_uploaded_pose(path, current)
        return value, text, pose_json_file(text)

    upload.upload(on_upload, inputs=[upload, html], outputs=[*editor.outputs, download],
                  queue=False, show_progress="hidden")
    text.change(pose_json_file, inputs=text, outputs=download, queue=False, show_progress="hidden")
    return editor

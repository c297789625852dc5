"""The pose editor (ui/pose_editor.py + .js): Python handlers, and a real browser dragging joints.

The browser tests launch a small Blocks app (photo + editor + a Python-side echo of the
keypoint JSON) on 127.0.0.1 and drive Debian's chromium through Playwright. They save
``tests/artifacts/pose_editor.png``.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from PIL import Image, ImageDraw

from engine.core.conditions import JOINTS, LIMBS, LIMB_BRIGHTNESS, default_pose, pose_to_json
from ui.pose_editor import (
    load_uploaded_pose, pose_editor, pose_for_image, pose_json_file, read_pose,
)

from tests.ui_helpers import textarea_value

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).parent / "artifacts"
J = {name: i for i, name in enumerate(JOINTS)}
PE_JSON = textarea_value("#pe-json textarea")


def _pose_json_holds(condition: str) -> str:
    """A predicate: the pose editor's JSON parses and `JSON.parse(...)<condition>` is true."""
    return f"(() => {{ try {{ return JSON.parse({PE_JSON}){condition}; }} catch (e) {{ return false; }} }})()"

def _photo() -> Image.Image:
    img = Image.new("RGB", (480, 640), (90, 120, 160))
    d = ImageDraw.Draw(img)
    d.ellipse((180, 60, 300, 180), fill=(230, 200, 170))
    d.rectangle((170, 190, 310, 420), fill=(200, 60, 60))
    return img


# ----------------------------------------------------------------------------- Python side
def test_photo_without_detector_gets_default_pose_and_a_note():
    html, text = pose_for_image(_photo())
    value = json.loads(html)
    assert value["background"].startswith("data:image/jpeg;base64,")
    assert "default skeleton" in value["note"]
    assert read_pose(text) == read_pose(json.dumps(pose_to_json(default_pose(480, 640))))
    html, text = pose_for_image(None)
    assert json.loads(html)["pose"] is None and text == ""


def test_detector_result_failure_and_nobody():
    found = default_pose(480, 640)
    _, text = pose_for_image(_photo(), detect=lambda img: found)
    assert read_pose(text).size == (480, 640)
    html, _ = pose_for_image(_photo(), detect=lambda img: None)
    assert "No person found" in json.loads(html)["note"]

    def broken(img):
        raise FileNotFoundError("body_pose_model.pth")

    html, text = pose_for_image(_photo(), detect=broken)
    assert "body_pose_model.pth" in json.loads(html)["note"] and read_pose(text) is not None


def test_upload_scales_to_the_current_photo_and_rejects_bad_files(tmp_path):
    current, _ = pose_for_image(_photo())  # 480x640 photo
    good = tmp_path / "pose.json"
    good.write_text(json.dumps(pose_to_json(default_pose(240, 320))))
    html, text = load_uploaded_pose(str(good), current)
    assert read_pose(text).size == (480, 640)
    assert json.loads(html)["background"] == json.loads(current)["background"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"canvas_width": 10, "canvas_height": 10, "people": [{"pose_keypoints_2d": [1] * 5}]}))
    with pytest.raises(gr.Error, match="5 keypoint numbers"):
        load_uploaded_pose(str(bad), current)
    with pytest.raises(gr.Error, match="shapes differ"):
        good.write_text(json.dumps(pose_to_json(default_pose(500, 100))))
        load_uploaded_pose(str(good), current)


def test_download_file_and_read_pose():
    text = json.dumps(pose_to_json(default_pose(64, 64)))
    path = pose_json_file(text)
    assert Path(path).name == "pose.json" and read_pose(Path(path).read_text()) == read_pose(text)
    assert pose_json_file("") is None and pose_json_file("{oops") is None
    assert read_pose("  ") is None
    with pytest.raises(ValueError):
        read_pose('{"people": []}')


# ----------------------------------------------------------------------------- browser
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url():
    with gr.Blocks() as demo:
        photo = gr.Image(type="pil", label="Photo", elem_id="photo")
        editor = pose_editor("Pose", elem_id="pe")
        editor.set_from(photo)
        echo = gr.Textbox(label="Python received", elem_id="echo")
        editor.json.change(lambda s: s, editor.json, echo, queue=False)
    port = _free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium package to run browser tests)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            yield b
        finally:
            b.close()


def _textbox(page, elem_id: str) -> str:
    return page.eval_on_selector(f"#{elem_id} textarea, #{elem_id} input", "e => e.value")


def _screen_xy(page, pose_json: dict, name: str) -> tuple[float, float]:
    box = page.locator("#pe canvas[data-role=edit]").bounding_box()
    k = box["width"] / pose_json["canvas_width"]
    x, y = pose_json["people"][0]["pose_keypoints_2d"][3 * J[name]: 3 * J[name] + 2]
    return box["x"] + x * k, box["y"] + y * k


def _stable_box(page, selector: str) -> dict:
    """The element's bounding box once the layout stops moving (images load after uploads)."""
    last = None
    for _ in range(50):
        box = page.locator(selector).bounding_box()
        if box == last:
            return box
        last = box
        page.wait_for_timeout(150)
    return last


def _joint(pose_json: dict, name: str) -> list[float]:
    return pose_json["people"][0]["pose_keypoints_2d"][3 * J[name]: 3 * J[name] + 3]


def test_drag_delete_and_add_joints_in_the_browser(app_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 1300})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app_url)
    page.wait_for_selector("#pe canvas[data-role=edit]")
    _photo().save(tmp_path / "photo.png")
    page.set_input_files("#photo input[type=file]", str(tmp_path / "photo.png"))
    page.wait_for_function(f"{PE_JSON}.length > 10", timeout=20000)
    before = json.loads(_textbox(page, "pe-json"))
    assert before["canvas_width"] == 480 and before["canvas_height"] == 640

    # Drag the right wrist up and to the left.
    page.wait_for_function("(() => { const i = document.querySelector('#photo img'); return i && i.complete; })()",
                           timeout=20000)
    box = _stable_box(page, "#pe canvas[data-role=edit]")
    k = box["width"] / 480
    sx, sy = _screen_xy(page, before, "RWrist")
    page.mouse.move(sx, sy)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(sx - 6 * i, sy - 12 * i)
    page.mouse.up()
    after = json.loads(_textbox(page, "pe-json"))
    old, new = _joint(before, "RWrist"), _joint(after, "RWrist")
    assert new[0] == pytest.approx(old[0] - 60 / k, abs=2) and new[1] == pytest.approx(old[1] - 120 / k, abs=2)
    assert _joint(after, "LWrist") == _joint(before, "LWrist")
    page.wait_for_function(f"{textarea_value('#echo textarea')}.includes('{new[0]:g}')", timeout=20000)
    assert read_pose(_textbox(page, "echo")) == read_pose(json.dumps(after))  # Python got the edit

    # The live OpenPose preview uses the OpenPose colours.
    preview = page.evaluate("""() => { const c = document.querySelector('#pe canvas[data-role=preview]');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height);
        return {w: c.width, h: c.height, data: Array.from(d.data)}; }""")
    arr = np.array(preview["data"], dtype=np.uint8).reshape(preview["h"], preview["w"], 4)
    s = preview["w"] / 480
    (xa, ya), (xb, yb) = _joint(after, "LKnee")[:2], _joint(after, "LAnkle")[:2]
    colour = next(c for a, b, c in LIMBS if (a, b) == (J["LKnee"], J["LAnkle"]))
    got = arr[int((ya + yb) / 2 * s), int((xa + xb) / 2 * s), :3]
    assert np.abs(got.astype(int) - [round(v * LIMB_BRIGHTNESS) for v in colour]).max() <= 3

    # Right-click the left elbow: it and its limbs are removed.
    page.mouse.click(*_screen_xy(page, after, "LElbow"), button="right")
    page.wait_for_function(_pose_json_holds(f".people[0].pose_keypoints_2d[{3 * J['LElbow'] + 2}] === 0"),
                           timeout=20000)
    assert "Removed LElbow" in page.inner_text("#pe [data-role=status]")

    # Add it back where we click.
    page.select_option("#pe select[data-role=add]", label="LElbow")
    page.mouse.click(box["x"] + 350 * k, box["y"] + 300 * k)
    page.wait_for_function(_pose_json_holds(f".people[0].pose_keypoints_2d[{3 * J['LElbow'] + 2}] > 0"),
                           timeout=20000)
    x, y, c = _joint(json.loads(_textbox(page, "pe-json")), "LElbow")
    assert (x, y) == (pytest.approx(350, abs=2), pytest.approx(300, abs=2)) and c == 1

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "pose_editor.png"), full_page=True)
    assert not errors, errors
    page.close()


def test_upload_and_download_json_in_the_browser(app_url, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 1300})
    page.goto(app_url)
    page.wait_for_selector("#pe canvas[data-role=edit]")
    # Nothing loaded yet: the uploaded pose keeps its own canvas.
    pose = default_pose(300, 200)
    (tmp_path / "in.json").write_text(json.dumps(pose_to_json(pose)))
    page.set_input_files('#pe input[type=file][accept=".json"]', str(tmp_path / "in.json"))
    page.wait_for_function(f"{PE_JSON}.includes('300')", timeout=20000)
    assert read_pose(_textbox(page, "pe-json")) == read_pose(json.dumps(pose_to_json(pose)))
    page.wait_for_function("document.querySelector('#pe canvas[data-role=edit]').width > 200", timeout=20000)
    with page.expect_download(timeout=20000) as info:
        page.click("#pe-download")
    path = tmp_path / "out.json"
    info.value.save_as(path)
    assert read_pose(path.read_text()) == read_pose(json.dumps(pose_to_json(pose)))
    page.close()

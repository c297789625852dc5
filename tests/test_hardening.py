"""Hardening through gradio_client on the tiny profile, against one app launched for the module.

- Every named endpoint that takes arguments gets bad values (wrong types, out-of-range and NaN
  numbers, no image, a 9000x9000 image, a truncated PNG, bytes that are no image, a painted layer
  of another aspect ratio, texts and choices the methods refuse); each answer is a readable error
  (not a traceback, not Gradio's generic message, and saying what was wrong) and the same endpoint
  then answers a valid request. A new endpoint without cases here fails the module. `pytest -s`
  prints how each kind of bad value was answered; tests/artifacts/hardening_cases.tsv lists them all.
- 4 clients at once on 4 tabs finish with the pixels they get alone; the same output image saved
  by concurrent requests is never read half-written.
- A simulated out-of-memory error is reported with a hint, clears the cache, and the app recovers.
- A second app with --auth and a 1 MB upload limit refuses what it should.
"""
from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from tests.ui_helpers import ROOT, free_port

CAT = ROOT / "assets" / "examples" / "cat.png"
RES = 64  # every valid request runs at 64 px with 1-2 steps

# -- bad values (sentinels are turned into payloads for the field's component) ---------------------
NONE, NOT_IMAGE_VALUE, TRUNCATED, JUNK, HUGE, OTHER_ASPECT, NAN = (
    "no image", "text where the image goes", "truncated PNG", "non-image bytes as .png", "9000x9000 PNG",
    "layer of another aspect ratio", "NaN")
PLAIN_PNG = "PNG without studio settings"
TEXT_FOR_NUMBER, TEXT_FOR_CHECKBOX = "twelve", "yes"  # sent as they are
FILE_KINDS = {TRUNCATED: "truncated.png", JUNK: "junk.png", HUGE: "huge.png"}

# How each kind must be answered (besides being readable): a regex on the message.
EXPECT = {
    NONE: r"[Uu]pload|photo|image|[Nn]o file",
    NOT_IMAGE_VALUE: r"does not fit this field",
    TRUNCATED: r"truncated|damaged|could not be read",
    JUNK: r"not a PNG|could not be read|not an image|Invalid file type",
    HUGE: r"9000x9000.*megapixels|too large",
    OTHER_ASPECT: r"does not fit the photo",
    PLAIN_PNG: r"carries no studio settings",
    NAN: r"finite",
    "non-number for a number": r"must be a number",
    "non-text for text": r"must be text",
    "non-boolean for a checkbox": r"true or false",
    "out of range": r"minimum|maximum|between|at least|at most|must be",
    "no value": r"must be|[Nn]o file|[Uu]pload",
    "not one of the choices": r"choices|must be one of",
    "invalid content": r".",  # an empty prompt, a text that cannot be split, a missing checkpoint...
}
UNREADABLE = re.compile(r"Traceback|upstream Gradio app|File \"|^Error$|^None$", re.M)


# -- files ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from bench.soak import make_files  # the photo, a brush layer, another aspect, junk and a huge PNG

    d = tmp_path_factory.mktemp("hardening")
    made = make_files(d)
    data = made.photo.read_bytes()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    pose = {"canvas_width": 64, "canvas_height": 64, "people": [{"pose_keypoints_2d": [32, 10, 1] * 18}]}
    (d / "pose.json").write_text(json.dumps(pose))
    from tests.test_p2pz_fast import make_checkpoint  # a small distilled direction for /pix2pix_zero_fast

    return SimpleNamespace(dir=d, photo=made.photo, layer=made.layer, other=made.other, pose=d / "pose.json",
                           checkpoint=make_checkpoint(d / "distilled"))


def _editor(path, layers=()):
    from gradio_client import handle_file

    return {"background": handle_file(str(path)), "layers": [handle_file(str(p)) for p in layers],
            "composite": handle_file(str(path))}


def _image(path):
    from gradio_client import handle_file

    return handle_file(str(path))


# -- the endpoint table --------------------------------------------------------------------------
# endpoint -> (valid args builder(files), [(field, bad value or sentinel), ...]). Field names are the
# endpoint's parameter names (client.view_api); a sentinel's payload depends on the field's component.

def _select_text(f):
    return [_editor(f.photo), "the cat", "CLIPSeg", 0.3, 0.25, 0.4, False, 0, 0, False, False]


def _select_click(f):
    return [_editor(f.photo), "40,40,+", False, 0, 0, False, False]


SELECT_TEXT_CASES = [("editor", NONE), ("editor", JUNK), ("editor", OTHER_ASPECT), ("text", ["the", "cat"]),
                     ("method", "a method that does not exist"), ("clip_thr", TEXT_FOR_NUMBER),
                     ("clip_thr", 7.0), ("add", TEXT_FOR_CHECKBOX), ("grow", 10_000)]
SELECT_CLICK_CASES = [("editor", NONE), ("editor", TRUNCATED), ("clicks", ["40,40,+"]), ("clicks", "forty,40"),
                      ("clicks", "9000,40,+"), ("feather", -5)]

TABLE = {
    "/sdedit": (lambda f: [_editor(f.photo, [f.layer]), 0, 0, False, False, "a photo of a dog", 0.6, 2, 7.5, 1, "",
                           RES, 5],
                [("editor", NONE), ("editor", NOT_IMAGE_VALUE), ("editor", TRUNCATED), ("editor", JUNK),
                 ("editor", HUGE), ("editor", OTHER_ASPECT), ("prompt", ["a", "dog"]), ("prompt", ""),
                 ("strength", 50), ("strength", NAN), ("steps", -3), ("steps", TEXT_FOR_NUMBER),
                 ("cfg", [7.5]), ("num_results", 100), ("seed", -1), ("seed", 2**40), ("resolution", 100),
                 ("invert", TEXT_FOR_CHECKBOX), ("negative", 3)]),
    "/pix2pix_zero": (lambda f: [_image(f.photo), "a photo of a cat", "cat", "dog", "", "", 0.0, 10, 5.0, 20.0, 0,
                                 RES, 4],
                      [("image", NONE), ("image", NOT_IMAGE_VALUE), ("image", TRUNCATED), ("image", JUNK),
                       ("image", HUGE), ("source_word", ["cat"]), ("target_word", "cat"), ("xa", NAN),
                       ("steps", 5), ("cfg", TEXT_FOR_NUMBER), ("reg_iters", -1),
                       ("target_lines", "# only a comment"), ("seed", TEXT_FOR_NUMBER)]),
    "/pix2pix_zero_fast": (lambda f: [_image(f.photo), str(f.checkpoint)],
                           [("image", NONE), ("image", NOT_IMAGE_VALUE), ("image", TRUNCATED), ("image", JUNK),
                            ("image", HUGE), ("checkpoint", "/nowhere/at/all", r"no distilled checkpoint folder"),
                            ("checkpoint", ["a", "b"], r"must be a folder path"),
                            ("checkpoint", 5, r"must be a folder path"),
                            ("checkpoint", "", r"no distilled checkpoint was given")]),
    "/pix2pix_zero_fast_list": (lambda f: [None], [("current", ["a", "b"], r"must be text"),
                                                   ("current", 5, r"must be text")]),
    "/pix2pix_zero_caption": (lambda f: [_image(f.photo), RES],
                              [("image", JUNK), ("image", HUGE), ("resolution", 10_000),
                               ("resolution", TEXT_FOR_NUMBER)]),
    "/iir_net": (lambda f: [_editor(f.photo, [f.layer]), 0, 0, False, False, "a white cat", "", 0, 100, 200, 2, 9.0,
                            RES, 3, ""],
                 [("editor", NONE), ("editor", TRUNCATED), ("editor", JUNK), ("editor", HUGE),
                  ("editor", OTHER_ASPECT), ("prompt", ["a", "cat"]), ("noise", 5000), ("noise", NAN),
                  ("canny_low", TEXT_FOR_NUMBER), ("steps", 0), ("checkpoint", "/nowhere/at/all"),
                  ("whole_image", TEXT_FOR_CHECKBOX)]),
    "/iedit": (lambda f: [_editor(f.photo, [f.layer]), 0, 0, False, False, "a photo of a tiger", "cat",
                          0.7, "", 1, 2, 7.5, 0.5, RES, 11],
               [("editor", NONE), ("editor", JUNK), ("editor", HUGE), ("editor", OTHER_ASPECT),
                ("prompt", ""), ("term", {"a": 1}), ("strength", 50),
                ("num_results", TEXT_FOR_NUMBER), ("threshold", NAN), ("checkpoint", "/nowhere/iedit"),
                ("seed", -7)]),
    "/iedit_compare": (lambda f: [1], [("index", TEXT_FOR_NUMBER), ("index", 99), ("index", None)]),
    "/layer_diffusion": (lambda f: [_editor(f.photo, [f.layer]), 0, 0, False, False, "a cat jumping in a forest",
                                    "", "", False, None, 0, 0, False, False, 0.7, 2.0, 1.0, 1, 1, 1, 1, 4, False,
                                    7.5, RES, 11],
                         [("editor", NONE), ("editor", TRUNCATED), ("editor", HUGE), ("editor", OTHER_ASPECT),
                          ("ref_editor", JUNK), ("ref_editor", HUGE), ("text", "a cat jumping"),
                          ("text", ["a", "cat"]), ("alpha", 3.0), ("tune_steps", 0), ("embed_steps", -5),
                          ("lora_rank", TEXT_FOR_NUMBER), ("lambda1", NAN), ("full", TEXT_FOR_CHECKBOX)]),
    "/layer_diffusion_split": (lambda f: ["a dog jumping in a forest"], [("text", ["a dog"]), ("text", 42)]),
    "/segment": (lambda f: [_editor(f.photo, [f.layer]), 0, 0, False, False],
                 [("editor", NONE), ("editor", NOT_IMAGE_VALUE), ("editor", TRUNCATED), ("editor", JUNK),
                  ("editor", HUGE), ("editor", OTHER_ASPECT), ("grow", 10_000), ("feather", TEXT_FOR_NUMBER),
                  ("whole_image", TEXT_FOR_CHECKBOX), ("feather", NAN)]),
    "/history_restore": (lambda f: [_image(f.saved)],  # f.saved: a result the app saved (see `warm`)
                         [("path", JUNK), ("path", TRUNCATED), ("path", NOT_IMAGE_VALUE), ("path", PLAIN_PNG)]),
    "/on_upload": (lambda f: [_image(f.pose), json.dumps({"pose": None, "background": None})],
                   [("path", JUNK), ("path", None), ("current", "{not json", r"pose editor's state"),
                    ("current", "[1, 2]", r"pose editor's state")]),
    "/pose_json_file": (lambda f: [f.pose.read_text()], [("text", ["x"])]),
}
for _prefix in ("sdedit", "ito", "iir_net", "iedit", "layer_diffusion", "layer_diffusion_ref", "segment"):
    TABLE[f"/{_prefix}_select_text"] = (_select_text, SELECT_TEXT_CASES)
    TABLE[f"/{_prefix}_select_click"] = (_select_click, SELECT_CLICK_CASES)
TABLE["/iedit_fill_mask"] = (_select_text, SELECT_TEXT_CASES)  # "Mask the edit term": the same selection

# ITO: a text edit with one optimisation step; a bad pose only matters when "Pose" is ticked.
TABLE["/ito"] = (
    lambda f: [_editor(f.photo), 0, 0, False, False, "replace the estimated mask", ["Text"], "a photo of a cat",
               "a photo of a dog", None, None, "", "", 0.6, 1, 1, 0.1, 1.0, 0.1, 1, 0.5, 2, 7.5, 1.0, RES, 3],
    [("editor", NONE), ("editor", JUNK), ("editor", HUGE), ("editor", OTHER_ASPECT), ("conditions", ["Smell"]),
     ("conditions", "Text"), ("prompt", ["a", "dog"]), ("lam", 3), ("steps", 1), ("tau", NAN),
     ("mask_seeds", TEXT_FOR_NUMBER), ("mask_ratio", 1.5), ("scribble", TRUNCATED),
     ("*", {"conditions": ["Pose"], "pose_json": "{not json"}, r"pose .*not valid JSON")])
TABLE["/ito_prepare"] = (lambda f: [_editor(f.photo), RES],
                         [("editor", JUNK), ("editor", HUGE), ("resolution", -64), ("resolution", NAN)])

RESULTS: list[tuple[str, str, str, str]] = []  # (endpoint, field, kind, message)


# -- the app -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(model_dir, tmp_path_factory):
    """One app for the module, with its own model cache (the OOM test clears it)."""
    from engine.models import ModelCache
    from ui import build_demo, launch_kwargs

    outputs = tmp_path_factory.mktemp("hardening_outputs")
    cache = ModelCache("tiny", device="cpu", cache_dir=model_dir)
    demo = build_demo(cache, outputs=outputs)
    port = free_port()
    demo.queue(default_concurrency_limit=1, max_size=64).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
        **launch_kwargs(outputs=outputs))
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", demo=demo, cache=cache, outputs=outputs)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def params(client):
    """endpoint -> [(parameter name, component)] as the app describes its API."""
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    return {name: [(p["parameter_name"], p["component"]) for p in info["parameters"]] for name, info in api.items()}


@pytest.fixture(scope="module", autouse=True)
def summary(artifacts):
    yield
    if not RESULTS:
        return
    with open(artifacts / "hardening_cases.tsv", "w") as fh:  # every case and its answer, for the issue note
        fh.write("endpoint\tfield\tkind\tanswer\n")
        fh.writelines(f"{e}\t{f}\t{k}\t{m}\n" for e, f, k, m in RESULTS)
    by_kind = defaultdict(list)
    for endpoint, field, kind, message in RESULTS:
        by_kind[kind].append((endpoint, field, message))
    lines = [f"\nHardening: {len(RESULTS)} bad-input cases on {len({r[0] for r in RESULTS})} endpoints, "
             "each a readable error followed by a valid request that was answered",
             f"{'kind of bad value':<32} {'cases':>5}  example answer"]
    for kind, rows in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
        endpoint, field, message = rows[0]
        lines.append(f"{kind:<32} {len(rows):>5}  {endpoint} {field}: {message[:110]}")
    print("\n".join(lines))


# -- sending a case ------------------------------------------------------------------------------

def _payload(sentinel, component, f):
    """The value sent for a sentinel in a field of this component."""
    editor = component == "Imageeditor"
    if not isinstance(sentinel, str) or sentinel == NONE:
        return None if sentinel == NONE else sentinel
    if sentinel == NOT_IMAGE_VALUE:
        return "not-an-image"
    if sentinel in FILE_KINDS:
        path = f.dir / FILE_KINDS[sentinel]
        return _editor(path) if editor else _image(path)
    if sentinel == PLAIN_PNG:
        return _image(f.photo)
    if sentinel == OTHER_ASPECT:
        return _editor(f.photo, [f.other])
    return sentinel


def _kind(sentinel, component) -> str:
    if isinstance(sentinel, str) and sentinel in EXPECT:
        return sentinel
    if sentinel is None:
        return "no value"
    if component in ("Slider", "Number") and isinstance(sentinel, (str, list, bool)):
        return "non-number for a number"
    if component == "Checkbox" and not isinstance(sentinel, bool):
        return "non-boolean for a checkbox"
    if component in ("Radio", "Checkboxgroup", "Dropdown"):
        return "not one of the choices"
    if component == "Textbox" and not isinstance(sentinel, str):
        return "non-text for text"
    if component in ("Slider", "Number") and isinstance(sentinel, (int, float)):
        return "out of range"
    return "invalid content"


def _raw_predict(url, endpoint, args, timeout=60):
    """POST through Gradio's REST API with Python's json (which writes NaN): the one way to send a
    non-finite number, since gradio_client refuses to encode it. Returns (error message or None)."""
    import httpx

    def upload(value):
        if isinstance(value, dict) and value.get("meta", {}).get("_type") == "gradio.FileData":
            with open(value["path"], "rb") as fh:
                r = httpx.post(url + "gradio_api/upload", files={"files": fh}, timeout=timeout)
            r.raise_for_status()
            return {"path": r.json()[0], "meta": {"_type": "gradio.FileData"}}
        if isinstance(value, dict):
            return {k: upload(v) for k, v in value.items()}
        if isinstance(value, list):
            return [upload(v) for v in value]
        return value

    body = json.dumps({"data": upload(args)})  # allow_nan: NaN goes out as NaN
    r = httpx.post(url + f"gradio_api/call{endpoint}", content=body,
                   headers={"content-type": "application/json"}, timeout=timeout)
    r.raise_for_status()
    event_id = r.json()["event_id"]
    with httpx.stream("GET", url + f"gradio_api/call{endpoint}/{event_id}", timeout=timeout) as stream:
        event = None
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("error", "complete"):
                data = line.split(":", 1)[1].strip()
                if event == "complete":
                    return None
                try:
                    data = json.loads(data)
                except ValueError:
                    pass
                if isinstance(data, dict) and data.get("error"):
                    return str(data["error"])
                return data if isinstance(data, str) else json.dumps(data)
    return None


def _valid(client, endpoint, f):
    builder, _ = TABLE[endpoint]
    return client.predict(*builder(f), api_name=endpoint)


def _cases():
    """(endpoint, field, value, expected regex or None) for every row of the table."""
    return [(endpoint, case[0], case[1], case[2] if len(case) > 2 else None)
            for endpoint, (_, cases) in TABLE.items() for case in cases]


@pytest.fixture(scope="module")
def warm(app, client, files):
    """Valid requests before the bad ones: /iedit leaves the result /iedit_compare shows in this
    session, and /sdedit a saved PNG that /history_restore reads."""
    from engine import history

    for endpoint in ("/iedit", "/sdedit"):
        _valid(client, endpoint, files)
    files.saved = history.recent(app.outputs)[0]
    return files


@pytest.mark.parametrize("endpoint, field, value, expect", _cases(), ids=lambda v: str(v)[:24])
def test_bad_value_is_a_readable_error_and_the_app_keeps_serving(app, client, params, files, warm, endpoint,
                                                                  field, value, expect, capfd):
    from gradio_client.exceptions import AppError

    if endpoint == "/ito" and endpoint not in params:
        pytest.skip("the ITO tab is not in this app")
    names = [name for name, _ in params[endpoint]]
    args = _valid_args(endpoint, files)
    assert len(args) == len(names), f"{endpoint}: the table's valid args do not match {names}"
    if field == "*":  # several fields at once
        for name, v in value.items():
            args[names.index(name)] = v
        kind = "invalid content"
    else:
        component = dict(params[endpoint])[field]
        kind = _kind(value, component)
        args[names.index(field)] = math.nan if value == NAN else _payload(value, component, files)
    if value == NAN:
        message = _raw_predict(app.url, endpoint, args)
        assert message is not None, f"{endpoint} accepted NaN in {field}"
    else:
        with pytest.raises(AppError) as err:
            client.predict(*args, api_name=endpoint)
        message = str(err.value)
    assert message and not UNREADABLE.search(message) and len(message) > 12, f"unreadable: {message!r}"
    assert re.search(expect or EXPECT[kind], message), f"{endpoint} {field} ({kind}): {message!r}"
    RESULTS.append((endpoint, field, kind, message.replace("\n", " ")))
    # The same endpoint answers the next valid request.
    assert _valid(client, endpoint, files) is not None
    # A user's mistake is not a server fault: nothing in the server's log.
    log = "".join(capfd.readouterr())
    assert "Traceback" not in log, f"{endpoint} {field}: the server logged a traceback:\n{log[-2000:]}"


def _valid_args(endpoint, files):
    return list(TABLE[endpoint][0](files))


def test_every_endpoint_is_in_the_table(params):
    """A new endpoint that takes arguments must get its bad values here too."""
    missing = sorted(name for name, fields in params.items() if fields and name not in TABLE)
    assert not missing, f"endpoints without hardening cases: {missing}"
    for endpoint, (_, cases) in TABLE.items():
        if endpoint in params:
            names = [name for name, _ in params[endpoint]]
            assert {case[0] for case in cases} - {"*"} <= set(names), endpoint


def test_endpoints_without_arguments_answer(client, params, warm):
    """Stop buttons, the history list: nothing to get wrong, but each answers (Stop with nothing running)."""
    names = sorted(name for name, fields in params.items() if not fields)
    assert "/history_list" in names and "/sdedit_stop" in names
    for name in names:
        client.predict(api_name=name)
    assert isinstance(client.predict(api_name="/history_list"), list)
    assert len(_valid(client, "/sdedit", warm)[0]) == 1  # a Stop with nothing running stops nothing later


# -- several users at once -----------------------------------------------------------------------

CONCURRENT = ("/sdedit", "/pix2pix_zero", "/iir_net", "/layer_diffusion")


def _pixels(result):
    """The first result image of an edit endpoint (the results gallery holds lossless PNGs)."""
    gallery = result[0]
    return np.asarray(Image.open(gallery[0]["image"]).convert("RGB"))


def test_four_clients_at_once_get_what_they_get_alone(app, files, warm):
    from gradio_client import Client

    alone = {endpoint: _pixels(_valid(Client(app.url, verbose=False), endpoint, files)) for endpoint in CONCURRENT}
    results, errors = {}, {}

    def user(endpoint):
        try:
            results[endpoint] = _pixels(_valid(Client(app.url, verbose=False), endpoint, files))
        except Exception as exc:  # reported below, with the endpoint
            errors[endpoint] = exc

    threads = [threading.Thread(target=user, args=(endpoint,)) for endpoint in CONCURRENT]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not any(t.is_alive() for t in threads), "a client did not finish within 3 minutes"
    assert not errors, errors
    for endpoint in CONCURRENT:
        assert np.array_equal(results[endpoint], alone[endpoint]), f"{endpoint} differs when run beside others"
    print(f"\n4 clients at once on {', '.join(CONCURRENT)}: all finished in {time.perf_counter() - start:.1f} s, "
          "pixels identical to the runs alone")


def test_the_same_output_image_saved_by_two_requests_is_never_read_half_written(app):
    """Gradio 6.31 rewrote a cached output image in place, so a client downloading the "before"
    photo while another request saved the same photo got a truncated file (found by bench.soak);
    ui/gradio_patches.py writes it atomically."""
    from gradio import processing_utils

    assert getattr(processing_utils.save_pil_to_cache, "_atomic", False)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    folder = app.outputs / "cache-race"
    path = processing_utils.save_pil_to_cache(image, str(folder), format="png")
    size = Path(path).stat().st_size
    done, short = threading.Event(), []

    def writer():
        while not done.is_set():
            processing_utils.save_pil_to_cache(image, str(folder), format="png")

    writers = [threading.Thread(target=writer) for _ in range(2)]
    for t in writers:
        t.start()
    try:
        for _ in range(500):
            n = len(Path(path).read_bytes())
            if n != size:
                short.append(n)
    finally:
        done.set()
        for t in writers:
            t.join()
    assert not short, f"{len(short)} of 500 reads saw a half-written file"


# -- out of memory -------------------------------------------------------------------------------

def test_out_of_memory_is_reported_the_cache_cleared_and_the_app_recovers(app, client, files, warm, monkeypatch):
    from gradio_client.exceptions import AppError

    from engine.methods import sdedit

    real_run = sdedit.run
    calls = []

    def out_of_memory_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return real_run(*args, **kwargs)

    assert app.cache.loaded(), "the models should be loaded before the simulated error"
    monkeypatch.setattr(sdedit, "run", out_of_memory_once)
    with pytest.raises(AppError) as err:
        _valid(client, "/sdedit", files)
    message = str(err.value)
    assert "memory" in message and "smaller resolution" in message and "offload" in message, message
    assert not UNREADABLE.search(message)
    assert app.cache.loaded() == []  # cleared, so the next request reloads the models
    result = _valid(client, "/sdedit", files)
    assert len(result[0]) == 1 and len(calls) == 2
    assert "sd" in app.cache.loaded()
    print(f"\nsimulated out-of-memory answered: {message!r}; cache cleared; next request served")


# -- --auth and the upload limit -----------------------------------------------------------------

@pytest.fixture(scope="module")
def guarded_app(model_dir):
    """A second app as `python app.py --auth user:secret --max-upload-mb 1` starts it."""
    from app import parse_auth
    from engine.models import ModelCache
    from ui import build_demo, launch_kwargs

    demo = build_demo(ModelCache("tiny", device="cpu", cache_dir=model_dir))
    port = free_port()
    demo.queue(default_concurrency_limit=1).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
        auth=parse_auth("user:secret"), **launch_kwargs(max_upload_mb=1))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def test_auth_refuses_a_client_without_credentials_and_accepts_one_with_them(guarded_app):
    import httpx
    from gradio_client import Client

    with pytest.raises(Exception) as err:
        Client(guarded_app, verbose=False).predict("a dog jumping in a forest", api_name="/layer_diffusion_split")
    assert re.search(r"auth|login|401|credentials", str(err.value), re.I), str(err.value)
    with pytest.raises(Exception):
        Client(guarded_app, auth=("user", "wrong"), verbose=False)
    r = httpx.post(guarded_app + "gradio_api/call/layer_diffusion_split", json={"data": ["a dog in a park"]})
    assert r.status_code in (401, 403)  # the REST API is closed too, not only the page
    client = Client(guarded_app, auth=("user", "secret"), verbose=False)
    subject, background, _ = client.predict("a dog jumping in a forest", api_name="/layer_diffusion_split")
    assert (subject, background) == ("a dog jumping", "in a forest")


def test_upload_limit_refuses_a_larger_file(guarded_app, files):
    from gradio_client import Client

    big = files.dir / "noise_2mb.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (900, 900, 3), dtype=np.uint8)).save(big, compress_level=0)
    assert big.stat().st_size > 2_000_000
    client = Client(guarded_app, auth=("user", "secret"), verbose=False)
    with pytest.raises(Exception) as err:
        client.predict(_editor(big), 0, 0, False, False, api_name="/segment")
    message = str(err.value)
    assert re.search(r"exceeds the maximum file size", message), message  # gradio_client checks first
    # The server itself refuses it too (a client that does not check, or a browser).
    import httpx

    with httpx.Client(base_url=guarded_app, timeout=60) as http:
        assert http.post("login", data={"username": "user", "password": "secret"}).status_code == 200
        with open(big, "rb") as fh:
            r = http.post("gradio_api/upload", files={"files": ("big.png", fh, "image/png")})
        assert r.status_code == 413 and "maximum allowed size" in r.text, (r.status_code, r.text[:200])
        with open(files.photo, "rb") as fh:
            assert http.post("gradio_api/upload", files={"files": ("photo.png", fh, "image/png")}).status_code == 200
    _, _, details = client.predict(_editor(files.photo), 0, 0, False, False, api_name="/segment")
    assert details["size"] == [96, 96]  # a file under the limit goes through
    print(f"\nupload over 1 MB refused: client {message[:90]!r}; server {r.status_code} {r.text[:90]!r}")

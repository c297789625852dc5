"""Launching the studio for UI tests: the real Blocks app on 127.0.0.1, tiny models, a free port."""
from __future__ import annotations

import socket
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic"]


def textarea_value(selector: str) -> str:
    """A JS expression for a textarea's value, '' while Gradio has not rendered it yet (a
    wait_for_function predicate that throws on a missing element fails at once instead of waiting)."""
    return f"(document.querySelector({selector!r}) || {{value: ''}}).value"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_app(models, outputs=None):
    """The studio's demo, served on 127.0.0.1 for the duration of the block; yields its URL.
    With `outputs`, results are saved there (History) and files from there may be served."""
    from ui import build_demo, launch_kwargs

    demo = build_demo(models, outputs=outputs)
    port = free_port()
    demo.queue(default_concurrency_limit=1).launch(server_name="127.0.0.1", server_port=port,
                                                   prevent_thread_lock=True, quiet=True,
                                                   **launch_kwargs(outputs=outputs))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def editor_payload(path) -> dict:
    """What gradio_client sends for a gr.ImageEditor: a background and no painted layers."""
    from gradio_client import handle_file

    return {"background": handle_file(str(path)), "layers": [], "composite": handle_file(str(path))}

"""Page scripts the studio runs once when the page loads, whatever number of widgets asks for them."""
from __future__ import annotations


def run_once_on_load(js: str) -> None:
    """Run `js` when the page loads, once per app: call it inside the Blocks context as often as
    needed (every mask editor asks for the intake script; the app asks for the clamp script)."""
    from gradio.context import Context

    root = Context.root_block
    if root is None:
        return
    installed = root.__dict__.setdefault("_des_page_scripts", set())
    if js in installed:
        return
    installed.add(js)
    root.load(None, None, None, js=js, api_name=False, queue=False)

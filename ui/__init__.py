"""The studio's Gradio app: `build_demo(runner_or_cache)` assembles the tabs, nothing else."""
from __future__ import annotations

from pathlib import Path

CSS_PATH = Path(__file__).resolve().parent.parent / "assets" / "studio.css"


def build_demo(cache, outputs=None):
    """A gr.Blocks with one tab per method found in ui/tabs (only methods that exist are shown).

    `outputs`: folder where every result is saved with its settings (None: not saved)."""
    import gradio as gr

    from ui import components as C
    from ui import tabs
    from ui.runner import Runner

    runner = Runner(cache, outputs=outputs)
    with gr.Blocks(title="Diffusion Edit Studio") as demo:
        gr.Markdown("# Diffusion Edit Studio\nResearch image-editing methods on Stable Diffusion 1.5, side by side.")
        C.banner(runner)
        with gr.Tabs():
            for tab in tabs.available():
                with gr.Tab(tab.TITLE, id=tab.__name__.rsplit(".", 1)[-1]):
                    tab.build(runner)
    demo.runner = runner
    return demo


def launch_kwargs() -> dict:
    """Theme and CSS go to launch() in Gradio 6."""
    css = CSS_PATH.read_text() if CSS_PATH.exists() else ""
    return {"css": css}

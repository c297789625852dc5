"""The studio's Gradio app: `build_demo(runner_or_cache)` assembles the tabs, nothing else."""
from __future__ import annotations

from pathlib import Path

CSS_PATH = Path(__file__).resolve().parent.parent / "assets" / "studio.css"


def build_demo(cache, outputs=None, distilled=None, previews=True):
    """A gr.Blocks with one tab per method found in ui/tabs (only methods that exist are shown).

    `outputs`: folder where every result is saved with its settings (None: not saved).
    `distilled`: folder of distilled pix2pix-zero directions the pix2pix-zero tab's fast mode lists
    (None: $DES_DISTILLED_DIR, else ./checkpoints/distilled).
    `previews`: live TAESD previews while an edit runs (ui/live_preview.py)."""
    import gradio as gr

    from ui import components as C
    from ui import tabs, typed_numbers
    from ui.runner import Runner

    from engine.methods.pix2pix_zero_fast import distilled_folder

    runner = Runner(cache, outputs=outputs, previews=previews)
    runner.distilled = distilled_folder(distilled)
    with gr.Blocks(title="Diffusion Edit Studio") as demo:
        gr.Markdown("## Diffusion Edit Studio · research image-editing methods on Stable Diffusion 1.5, side by side",
                    elem_id="studio-title")
        C.banner(runner)
        typed_numbers.install()
        with gr.Tabs() as runner.tabs:
            for tab in tabs.available():
                with gr.Tab(tab.TITLE, id=tab.__name__.rsplit(".", 1)[-1]):
                    tab.build(runner)
    demo.runner = runner
    from ui.api_guard import guard
    from ui.gradio_patches import atomic_image_cache

    atomic_image_cache()  # concurrent requests returning the same image must not truncate each other's
    return guard(demo)  # readable errors for API values no widget sends


def launch_kwargs(outputs=None, max_upload_mb: int = 25) -> dict:
    """launch() settings shared by the app and the tests: CSS (a launch() argument in Gradio 6),
    the only folders served besides Gradio's own uploads (assets/, the outputs folder and the live
    previews' folder, whose runs are named by random tokens), and the upload size limit."""
    from ui.live_preview import PREVIEW_ROOT

    css = CSS_PATH.read_text() if CSS_PATH.exists() else ""
    allowed = [str(CSS_PATH.parent), str(PREVIEW_ROOT)] + ([str(Path(outputs).resolve())] if outputs else [])
    # show_error: a payload Gradio itself refuses (say, text where an image goes) reaches the
    # client as its message instead of "The upstream Gradio app has raised an exception".
    return {"css": css, "allowed_paths": allowed, "max_file_size": f"{int(max_upload_mb)}mb", "show_error": True}

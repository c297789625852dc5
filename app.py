"""Diffusion Edit Studio: `python app.py [--profile sd15|tiny|sd15-shape] [--port 7860] [--host 127.0.0.1]`."""
from __future__ import annotations

import argparse
import os

from engine.models import COMPONENTS, PROFILES, ModelCache, add_speed_arguments, speed_options


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Diffusion Edit Studio (Gradio app)")
    p.add_argument("--profile", choices=PROFILES, default=os.environ.get("DES_PROFILE", "sd15"),
                   help="sd15: real weights; tiny: random tiny models, offline; sd15-shape: random full-size")
    # A Hugging Face Space sets GRADIO_SERVER_NAME=0.0.0.0; everywhere else the default is this machine only.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", help="ask Gradio for a public share link (off by default)")
    p.add_argument("--device", default=None, help="cuda, cuda:1 or cpu (default: cuda if available)")
    p.add_argument("--memory", choices=("gpu", "offload"), default="gpu",
                   help="gpu: all models resident; offload: each model moves to the GPU only while it runs")
    add_speed_arguments(p)
    p.add_argument("--outputs", default=os.environ.get("DES_OUTPUTS", "outputs"),
                   help="folder where every result is saved with its settings (default ./outputs)")
    p.add_argument("--distilled", default=os.environ.get("DES_DISTILLED_DIR", "checkpoints/distilled"),
                   help="folder of distilled pix2pix-zero directions for the tab's fast mode "
                        "(default ./checkpoints/distilled)")
    p.add_argument("--no-previews", action="store_true",
                   help="no live TAESD previews while an edit runs (they need the taesd weights)")
    p.add_argument("--auth", default=os.environ.get("DES_AUTH"), metavar="USER:PASSWORD",
                   help="ask for this user name and password before showing the app")
    p.add_argument("--max-upload-mb", type=int, default=25, help="largest upload accepted, in MB (default 25)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=SRC",
                   help=f"override a model's hub id or folder; NAME in {', '.join(COMPONENTS)}")
    return p.parse_args(argv)


def make_cache(args) -> ModelCache:
    overrides = {}
    for item in args.model:
        name, sep, source = item.partition("=")
        if not sep or not source:
            raise SystemExit(f"--model expects NAME=SRC, got {item!r}")
        overrides[name] = source
    try:
        return ModelCache(args.profile, device=args.device, memory=args.memory, overrides=overrides,
                          **speed_options(args))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}")


def parse_auth(text):
    if not text:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise SystemExit("--auth expects USER:PASSWORD")
    return (user, password)


def main(argv=None) -> None:
    from pathlib import Path

    from ui import build_demo, launch_kwargs

    from ui import zerogpu

    args = parse_args(argv)
    outputs = Path(args.outputs).resolve()
    cache = make_cache(args)
    if zerogpu.prepare_environment():
        cache.sd()  # ZeroGPU: load at start-up, outside any GPU call
    demo = build_demo(cache, outputs=outputs, distilled=Path(args.distilled).resolve(), previews=not args.no_previews)
    demo.queue(default_concurrency_limit=1, max_size=64).launch(
        server_name=args.host, server_port=args.port, share=args.share, auth=parse_auth(args.auth),
        **launch_kwargs(outputs=outputs, max_upload_mb=args.max_upload_mb))


if __name__ == "__main__":
    main()

"""Soak: python -m bench.soak --profile tiny --requests 200 --clients 4 [--port P] [--time-limit S].

Launches the studio in this process on 127.0.0.1 (loopback only), warms it up with one valid
request per kind, then sends a fixed, seeded mix of requests to every tab from `--clients`
concurrent gradio_client clients: about three in four valid (small images, few steps, a new
seed each), the rest invalid (out-of-range numbers, wrong types, no image, a 9000x9000 image,
bytes that are no image, a mask of another shape, texts the methods refuse). It records

- failures: a valid request that errors (or times out), an invalid one that is answered with a
  result, or with an error that is not readable (a traceback, Gradio's generic message, a bare
  "Error") or that does not say what was wrong;
- the process's resident memory (RSS): at start, after the warm-up, at the end, and its peak,

prints a summary and adds a row to the "Soak" table of bench/RESULTS.md. It checks that no
request failed and that RSS grew by less than `--bound-mb` (default 300 MB) from the end of
the warm-up to the end; the exit status is 0 only then. It always stops: after `--requests`
requests or `--time-limit` seconds, whichever comes first (requests not sent by then are
counted as such), each request waiting at most `--request-timeout` seconds.
"""
from __future__ import annotations

import argparse
import gc
import os
import queue
import random
import re
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable, Optional

from bench.results import RESULTS, add_row, command_line

ROOT = Path(__file__).resolve().parent.parent
CAT = ROOT / "assets" / "examples" / "cat.png"
RES = 64
UNREADABLE = re.compile(r"Traceback|upstream Gradio app|File \"|^Error$|^None$", re.M)

SOAK_HEADING = "## Soak"
SOAK_INTRO = (
    "Rows appended by `python -m bench.soak` (the command is in the row): the app in-process on 127.0.0.1, "
    "a seeded mix of valid and invalid requests to every tab from concurrent gradio_client clients. "
    "A failure is a valid request that errors or an invalid one not refused with a readable message. "
    "RSS is the whole process (server, models and clients); the bound is on its growth from the end of "
    "the warm-up to the end.\n")
SOAK_HEADER = ("| date | device | profile | clients | requests sent (valid / invalid) | failures | not sent "
               "| wall s | req/s | median / p95 s | RSS start / after warm-up / end / peak MB | growth MB "
               "| bound | verdict | command |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


# -- the requests ----------------------------------------------------------------------------------

@dataclass
class Files:
    photo: Path
    layer: Path
    other: Path
    junk: Path
    huge: Path


def make_files(folder: Path) -> Files:
    from PIL import Image

    photo = Image.open(CAT).convert("RGB").crop((75, 0, 375, 300)).resize((96, 96), Image.Resampling.LANCZOS)
    photo.save(folder / "photo.png")
    layer = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (24, 24, 72, 96))
    layer.save(folder / "layer.png")
    other = Image.new("RGBA", (40, 80), (0, 0, 0, 0))
    other.paste((255, 255, 255, 255), (0, 0, 20, 40))
    other.save(folder / "other.png")
    (folder / "junk.png").write_bytes(b"not an image, only text saved as .png\n" * 40)
    Image.new("RGB", (9000, 9000), (120, 90, 60)).save(folder / "huge.png", compress_level=1)
    return Files(folder / "photo.png", folder / "layer.png", folder / "other.png", folder / "junk.png",
                 folder / "huge.png")


def _editor(path, layers=()):
    from gradio_client import handle_file

    return {"background": handle_file(str(path)), "layers": [handle_file(str(p)) for p in layers],
            "composite": handle_file(str(path))}


def _image(path):
    from gradio_client import handle_file

    return handle_file(str(path))


@dataclass
class Kind:
    """One kind of request: `args(files, seed)`; `expect` is None for a valid request, else a
    regex the error message must match."""

    name: str
    endpoint: str
    args: Callable[[Files, int], list]
    expect: Optional[str] = None

    @property
    def valid(self) -> bool:
        return self.expect is None


def _sdedit(f, s, **kw):
    a = dict(editor=_editor(f.photo, [f.layer]), grow=0, feather=0, invert=False, whole=False,
             prompt="a photo of a dog", strength=0.6, steps=2, cfg=7.5, n=1, negative="", res=RES, seed=s)
    a.update(kw)
    return list(a.values())


def _p2pz(f, s, **kw):
    a = dict(image=_image(f.photo), caption="a photo of a cat", source="cat", target="dog", source_lines="",
             target_lines="", xa=0.0, steps=10, cfg=5.0, reg_lambda=20.0, reg_iters=0, res=RES, seed=s)
    a.update(kw)
    return list(a.values())


def _ito(f, s, **kw):
    a = dict(editor=_editor(f.photo), grow=0, feather=0, invert=False, whole=False,
             mask_mode="replace the estimated mask", conditions=["Text"], caption="a photo of a cat",
             prompt="a photo of a dog", scribble=None, scribble_source=None, pose_json="", pose_source="",
             lam=0.6, t_u=1, k=1, lr=0.1, encode_ratio=1.0, tau=0.1, mask_seeds=1, mask_encode_ratio=0.5, steps=2,
             cfg=7.5, control_scale=1.0, res=RES, seed=s)
    a.update(kw)
    return list(a.values())


def _iir(f, s, **kw):
    a = dict(editor=_editor(f.photo, [f.layer]), grow=0, feather=0, invert=False, whole=False,
             prompt="a white cat", roi="", noise=0, canny_low=100, canny_high=200, steps=2, cfg=9.0, res=RES,
             seed=s, checkpoint="")
    a.update(kw)
    return list(a.values())


def _iedit(f, s, **kw):
    a = dict(editor=_editor(f.photo, [f.layer]), grow=0, feather=0, invert=False, whole=False,
             prompt="a photo of a tiger", term="cat", strength=0.7, checkpoint="", n=1, steps=2, cfg=7.5, threshold=0.5, res=RES, seed=s)
    a.update(kw)
    return list(a.values())


def _ld(f, s, **kw):
    a = dict(editor=_editor(f.photo, [f.layer]), grow=0, feather=0, invert=False, whole=False,
             text="a cat jumping in a forest", subject="", background="", keep=False, ref_editor=None, ref_grow=0,
             ref_feather=0, ref_invert=False, ref_whole=False, alpha=0.7, lambda1=2.0, lambda2=1.0, n=1,
             embed_steps=1, tune_steps=1, steps=1, lora_rank=4, full=False, cfg=7.5, res=RES, seed=s)
    a.update(kw)
    return list(a.values())


def _segment(f, s, **kw):
    a = dict(editor=_editor(f.photo, [f.layer]), grow=0, feather=0, invert=False, whole=False)
    a.update(kw)
    return list(a.values())


KINDS = [
    # valid: every tab
    Kind("sdedit", "/sdedit", _sdedit),
    Kind("pix2pix-zero", "/pix2pix_zero", _p2pz),
    Kind("pix2pix-zero caption", "/pix2pix_zero_caption", lambda f, s: [_image(f.photo), RES]),
    Kind("ito", "/ito", _ito),
    Kind("ito prepare", "/ito_prepare", lambda f, s: [_editor(f.photo), RES]),
    Kind("iir-net", "/iir_net", _iir),
    Kind("iedit", "/iedit", _iedit),
    Kind("layer-diffusion", "/layer_diffusion", _ld),
    Kind("layer-diffusion split", "/layer_diffusion_split", lambda f, s: ["a dog jumping in a forest"]),
    Kind("segment", "/segment", _segment),
    Kind("select by text", "/segment_select_text",
         lambda f, s: [_editor(f.photo), "the cat", "CLIPSeg", 0.3, 0.25, 0.4, False, 0, 0, False, False]),
    Kind("select by click", "/sdedit_select_click",
         lambda f, s: [_editor(f.photo), f"{s % 90 + 3},40,+", False, 0, 0, False, False]),
    Kind("history list", "/history_list", lambda f, s: []),
    # invalid: each must be refused readably, saying what was wrong
    Kind("sdedit strength 50", "/sdedit", lambda f, s: _sdedit(f, s, strength=50), r"greater than maximum"),
    Kind("sdedit empty prompt", "/sdedit", lambda f, s: _sdedit(f, s, prompt=""), r"prompt is empty"),
    Kind("sdedit steps as text", "/sdedit", lambda f, s: _sdedit(f, s, steps="twelve"), r"must be a number"),
    Kind("sdedit 9000x9000 photo", "/sdedit", lambda f, s: _sdedit(f, s, editor=_editor(f.huge)), r"megapixels"),
    Kind("iedit prompt as a list", "/iedit", lambda f, s: _iedit(f, s, prompt=["a", "tiger"]), r"must be text"),
    Kind("pix2pix-zero no photo", "/pix2pix_zero", lambda f, s: _p2pz(f, s, image=None), r"Upload a photo"),
    Kind("layer-diffusion unsplittable text", "/layer_diffusion",
         lambda f, s: _ld(f, s, text="a cat jumping"), r"could not split"),
    Kind("iir-net noise 5000", "/iir_net", lambda f, s: _iir(f, s, noise=5000), r"greater than maximum"),
    Kind("ito lambda 3", "/ito", lambda f, s: _ito(f, s, lam=3), r"greater than maximum"),
    Kind("segment non-image bytes", "/segment", lambda f, s: _segment(f, s, editor=_editor(f.junk)),
         r"could not be read as an image"),
    Kind("segment mask of another shape", "/segment",
         lambda f, s: _segment(f, s, editor=_editor(f.photo, [f.other])), r"does not fit the photo"),
    Kind("segment checkbox as text", "/segment", lambda f, s: _segment(f, s, invert="yes"), r"true or false"),
]


def schedule(n: int, seed: int, invalid_share: float = 0.25) -> list[Kind]:
    """n requests, a fixed function of the seed: every valid kind, then a seeded mix."""
    rng = random.Random(seed)
    valid = [k for k in KINDS if k.valid]
    invalid = [k for k in KINDS if not k.valid]
    plan = [rng.choice(invalid) if rng.random() < invalid_share else rng.choice(valid) for _ in range(n)]
    rng.shuffle(plan)
    return plan


# -- running them ----------------------------------------------------------------------------------

@dataclass
class Outcome:
    kind: Kind
    seconds: float
    failure: Optional[str] = None  # None: the request was answered as it should be
    message: str = ""


def send(client, kind: Kind, files: Files, seed: int, timeout: float) -> Outcome:
    from gradio_client.exceptions import AppError

    start = time.perf_counter()
    failure, message = None, ""
    try:
        job = client.submit(*kind.args(files, seed), api_name=kind.endpoint)
        job.result(timeout=timeout)
        if not kind.valid:
            failure = "an invalid request was answered with a result"
    except AppError as exc:
        message = str(exc)
        if kind.valid:
            failure = f"a valid request errored: {message[:200]}"
        elif UNREADABLE.search(message) or len(message) < 12:
            failure = f"unreadable error: {message[:200]!r}"
        elif not re.search(kind.expect, message):
            failure = f"the error does not say what was wrong: {message[:200]!r}"
    except Exception as exc:  # timeouts, connection errors
        message = f"{type(exc).__name__}: {exc}"
        failure = f"no answer: {message[:200]}"
    return Outcome(kind, time.perf_counter() - start, failure, message)


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class PeakSampler(threading.Thread):
    def __init__(self, every: float = 0.5):
        super().__init__(daemon=True)
        self.every, self.peak, self._stop_event = every, rss_mb(), threading.Event()

    def run(self):
        while not self._stop_event.wait(self.every):
            self.peak = max(self.peak, rss_mb())

    def stop(self) -> float:
        self._stop_event.set()
        self.join(timeout=5)
        return max(self.peak, rss_mb())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="tiny", help="model profile (tiny: random tiny models, offline)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cpu for tiny, else cuda if available)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the request mix")
    p.add_argument("--time-limit", type=float, default=1200.0, help="stop sending after this many seconds")
    p.add_argument("--request-timeout", type=float, default=180.0)
    p.add_argument("--bound-mb", type=float, default=300.0, help="allowed RSS growth after the warm-up")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny models: 1 is fastest)")
    p.add_argument("--no-record", action="store_true", help="print only; do not add a row to RESULTS.md")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from gradio_client import Client

    from engine.models import ModelCache
    from ui import build_demo, launch_kwargs

    rss_start = rss_mb()
    sampler = PeakSampler()
    sampler.start()
    torch.set_num_threads(args.threads)
    device = args.device or ("cpu" if args.profile == "tiny" else None)
    work = tempfile.TemporaryDirectory(prefix="soak-")
    folder = Path(work.name)
    files = make_files(folder)
    cache = ModelCache(args.profile, device=device)
    demo = build_demo(cache, outputs=folder / "outputs")
    port = args.port or free_port()
    demo.queue(default_concurrency_limit=1, max_size=64).launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
        **launch_kwargs(outputs=folder / "outputs"))
    url = f"http://127.0.0.1:{port}/"
    try:
        # Warm-up: every kind once, one client (loads every model the mix uses).
        t0 = time.perf_counter()
        warm_client = Client(url, verbose=False)
        warm = [send(warm_client, kind, files, 1000 + i, args.request_timeout) for i, kind in enumerate(KINDS)]
        warm_s = time.perf_counter() - t0
        gc.collect()
        rss_warm = rss_mb()
        print(f"warm-up: {len(warm)} requests in {warm_s:.1f} s, {sum(o.failure is not None for o in warm)} "
              f"failed; RSS {rss_start:.0f} MB at start, {rss_warm:.0f} MB after the warm-up")
        for o in warm:
            if o.failure:
                print(f"  warm-up failure, {o.kind.name}: {o.failure}")

        plan = schedule(args.requests, args.seed)
        todo: queue.Queue = queue.Queue()
        for i, kind in enumerate(plan):
            todo.put((i, kind))
        outcomes: list[Outcome] = []
        lock = threading.Lock()
        deadline = time.perf_counter() + args.time_limit

        def user():
            client = Client(url, verbose=False)
            while time.perf_counter() < deadline:
                try:
                    i, kind = todo.get_nowait()
                except queue.Empty:
                    return
                outcome = send(client, kind, files, i, args.request_timeout)
                with lock:
                    outcomes.append(outcome)
                    done = len(outcomes)
                if done % 20 == 0:
                    print(f"  {done}/{len(plan)} requests, RSS {rss_mb():.0f} MB", flush=True)

        start = time.perf_counter()
        users = [threading.Thread(target=user, daemon=True) for _ in range(args.clients)]
        for t in users:
            t.start()
        for t in users:
            t.join(timeout=max(1.0, deadline - time.perf_counter()) + args.request_timeout + 30)
        wall = time.perf_counter() - start
        with lock:
            outcomes = list(outcomes)
    finally:
        demo.close()
    gc.collect()
    rss_end = rss_mb()
    peak = sampler.stop()
    work.cleanup()

    not_sent = len(plan) - len(outcomes)
    failures = [o for o in outcomes if o.failure] + [o for o in warm if o.failure]
    n_valid = sum(o.kind.valid for o in outcomes)
    growth = rss_end - rss_warm
    seconds = sorted(o.seconds for o in outcomes) or [float("nan")]
    median = statistics.median(seconds)
    p95 = seconds[min(len(seconds) - 1, int(0.95 * len(seconds)))]
    ok = not failures and not_sent == 0 and growth < args.bound_mb

    print(f"\nSoak ({args.profile}, {args.clients} clients): {len(outcomes)} requests sent "
          f"({n_valid} valid, {len(outcomes) - n_valid} invalid) in {wall:.1f} s, {not_sent} not sent")
    print(f"{'kind':<36} {'sent':>5} {'failed':>6} {'median s':>9}")
    by_kind: dict[str, list[Outcome]] = {}
    for o in outcomes:
        by_kind.setdefault(o.kind.name, []).append(o)
    for kind in KINDS:
        rows = by_kind.get(kind.name, [])
        if rows:
            print(f"{kind.name:<36} {len(rows):>5} {sum(bool(o.failure) for o in rows):>6} "
                  f"{statistics.median(o.seconds for o in rows):>9.2f}")
    for o in failures[:10]:
        print(f"FAILURE {o.kind.name}: {o.failure}")
    print(f"latency median {median:.2f} s, p95 {p95:.2f} s; throughput {len(outcomes) / wall:.2f} req/s")
    print(f"RSS: start {rss_start:.0f} MB, after warm-up {rss_warm:.0f} MB, end {rss_end:.0f} MB, "
          f"peak {peak:.0f} MB; growth after warm-up {growth:+.0f} MB (bound < {args.bound_mb:.0f} MB)")
    print(f"verdict: {'PASS' if ok else 'FAIL'} ({len(failures)} failures, {not_sent} not sent)")

    if not args.no_record:
        device_name = (torch.cuda.get_device_name(cache.device) if cache.device.type == "cuda"
                       else f"CPU ({args.threads} thread{'s' if args.threads > 1 else ''}, {os.cpu_count()} cores)")
        command = command_line("bench.soak", argv)
        row = (f"| {date.today()} | {device_name} | {args.profile} | {args.clients} "
               f"| {len(outcomes)} ({n_valid} / {len(outcomes) - n_valid}) | {len(failures)} | {not_sent} "
               f"| {wall:.0f} | {len(outcomes) / wall:.2f} | {median:.2f} / {p95:.2f} "
               f"| {rss_start:.0f} / {rss_warm:.0f} / {rss_end:.0f} / {peak:.0f} | {growth:+.0f} "
               f"| < {args.bound_mb:.0f} MB | {'PASS' if ok else 'FAIL'} | `{command}` |\n")
        add_row(SOAK_HEADING, SOAK_HEADER, row, intro=SOAK_INTRO)
        print(f"added a row to {RESULTS.relative_to(ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

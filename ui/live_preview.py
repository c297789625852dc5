"""Live previews while an edit runs (issue 18): the latents of the running step, decoded by TAESD
(engine/core/previews.py), shown in a card floating in the window's corner (nothing on the page
moves), replaced about twice a second, hidden when the run ends.

How it flows: Edit's first listener (registered before the tab's edit event, like Stop's clear)
arms this browser session's slot and starts a `gr.Timer`. The runner gives a method run a
`Previewer`, and its step callback puts each preview in the slot. The timer's tick shows the
newest one and stops the timer once the run has ended (or if no run started within ARM_S: the
tab refused its input before the engine ran). Ticks are not queued behind the edit.

Previews need the TAESD weights (`--model taesd=FOLDER`, or the tiny and sd15-shape profiles'
random stand-ins); without them, and on ZeroGPU (the run is in another process), the studio runs
as before with no preview. `--no-previews` turns them off.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

import gradio as gr
from PIL import Image

log = logging.getLogger("studio")

TICK_S = 0.5   # how often the page asks for the newest preview
ARM_S = 15.0   # an armed slot whose run never started (input refused) is dropped after this


@dataclass
class Slot:
    armed: float = field(default_factory=time.monotonic)
    started: bool = False
    done: bool = False
    image: Optional[Image.Image] = None
    seq: int = 0
    shown: int = 0


class LivePreviews:
    """Per-session preview slots and the shared TAESD previewer factory (one per runner)."""

    def __init__(self, cache, enabled: bool = True, every_s: float = TICK_S):
        self.cache = cache
        self.enabled = enabled
        self.every_s = every_s  # seconds between two previews of a run (no use in decoding faster than the page asks)
        self._slots: dict[str, Slot] = {}
        self._lock = threading.Lock()

    def previewer(self):
        """A fresh engine.core.previews.Previewer, or None (off, or TAESD's weights are missing)."""
        from ui import zerogpu

        if not self.enabled or zerogpu.active():
            return None
        from engine.core.previews import Previewer

        try:
            taesd = self.cache.get("taesd")
        except Exception as exc:  # missing or broken weights: the edit runs, without previews
            log.warning("live previews are off: TAESD could not be loaded (%s: %s)", type(exc).__name__,
                        (str(exc).splitlines() or [""])[0])
            self.enabled = False
            return None
        return Previewer(taesd, every_s=self.every_s)

    # -- the slot of one browser session -------------------------------------------------------
    def arm(self, key: str) -> None:
        with self._lock:
            self._slots[key] = Slot()

    def start(self, key: str) -> Slot:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None or slot.done:
                slot = self._slots[key] = Slot()
            slot.started = True
            return slot

    def finish(self, slot: Slot) -> None:
        slot.done = True

    def take(self, key: str) -> tuple[str, Optional[Image.Image]]:
        """("waiting" | "running" | "ended", the newest preview not yet shown or None)."""
        with self._lock:
            slot = self._slots.get(key)
            if slot is None:
                return "ended", None
            if slot.done or (not slot.started and time.monotonic() - slot.armed > ARM_S):
                del self._slots[key]
                return "ended", None
            if not slot.started:
                return "waiting", None
            if slot.seq != slot.shown and slot.image is not None:
                slot.shown = slot.seq
                return "running", slot.image
            return "running", None


def live_preview(runner, prefix: str, run: gr.Button) -> gr.Image:
    """The preview image (hidden until a preview arrives) and its timer, armed by `run`'s click.
    Call before the tab wires its edit event to `run` (the page runs a click's listeners in order)."""
    image = gr.Image(label="Live preview (TAESD, while the edit runs)", visible=False, interactive=False,
                     height=200, elem_id=f"{prefix}-live", format="jpeg", buttons=[],
                     elem_classes=["des-live-preview"])
    timer = gr.Timer(TICK_S, active=False)
    previews = runner.previews

    def arm(request: gr.Request):
        if not previews.enabled:
            return gr.update(active=False)
        previews.arm(runner._key(request))
        return gr.update(active=True)

    def tick(request: gr.Request):
        state, shown = previews.take(runner._key(request))
        if state == "ended":
            return gr.update(value=None, visible=False), gr.update(active=False)
        if shown is None:
            return gr.update(), gr.update(active=True)
        return gr.update(value=shown, visible=True), gr.update(active=True)

    run.click(arm, None, timer, api_name=False, queue=False, show_progress="hidden")
    timer.tick(tick, None, [image, timer], api_name=False, queue=False, show_progress="hidden")
    return image

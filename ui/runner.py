"""The bridge between a tab and the engine: runs a method with a Gradio progress bar, turns
bad input into `gr.Error`, lets a Stop button cancel a running edit, and recovers from
out-of-memory errors. Holds no per-request state beyond the cancel flags of running requests.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Optional

import gradio as gr
import torch

from engine import history
from ui import zerogpu
from engine.models import ModelUnavailable
from engine.types import Cancelled, EditResult, StepInfo
from ui.progress import RunProgress, Timings, duration, words

log = logging.getLogger("studio")

LONG_RUN_S = 30.0  # runs expected to take longer are announced before they start
# Seconds between two progress messages of a run (a new stage and the last step always go out).
# In Gradio 6.31 each message makes the page re-upload every image editor's photo (three files),
# so a message per step meant ~250 uploads for a 100-step edit on the tiny profile.
PROGRESS_EVERY_S = 1.0

OOM_HINT = ("The GPU ran out of memory. Try a smaller resolution or fewer results, or start the app "
            "with --memory offload. The model cache was cleared; the next request will reload the models.")


class Runner:
    """Runs engine methods for the UI; one per app, shared by every tab and session."""

    def __init__(self, cache, outputs: Optional[Path] = None, previews: bool = True):
        from ui.live_preview import LivePreviews

        self.cache = cache
        self.outputs = outputs  # None: results are not saved to the history folder
        self._lock = threading.Lock()
        # One engine run at a time: Gradio may start the next queued event while a cancelled
        # run's thread still finishes its current step; this lock makes the next one wait.
        self._gpu = threading.Lock()
        self._cancel: dict[str, threading.Event] = {}
        self._execute = zerogpu.wrap(_execute, duration=_estimate_seconds)
        self.timings = Timings()  # learned seconds per unit of work: estimates before a run
        self.restore_targets: list = []  # filled by the tabs (components.restorable), read by History
        self.tabs = None  # the gr.Tabs, so History can switch to a restored tab
        self.previews = LivePreviews(cache, enabled=previews)  # TAESD previews while a method runs
        self.progress_every_s = PROGRESS_EVERY_S

    @property
    def is_fake(self) -> bool:
        return self.cache.is_fake

    def defaults(self, method: ModuleType) -> dict:
        """The method's default inputs on this cache's profile (engine/profile_defaults.py)."""
        from engine.profile_defaults import defaults

        return defaults(method, self.cache.profile)

    def _key(self, request: Optional[gr.Request]) -> str:
        return getattr(request, "session_hash", None) or "default"

    def stop(self, request: Optional[gr.Request] = None) -> bool:
        """Ask the running edit of this browser session to stop at its next step; False when
        nothing of this session was running."""
        with self._lock:
            event = self._cancel.get(self._key(request))
        if event is not None:
            event.set()
        return event is not None

    def call(self, fn, *args, request: Optional[gr.Request] = None, progress: Any = None,
             tracker: Optional[RunProgress] = None, previews: bool = False, **kwargs):
        """Run `fn(*args, on_step=..., **kwargs)` with progress, cancellation and clear errors.
        `tracker` turns the method's per-stage steps into one bar over the whole run (ui/progress.py);
        `previews` hands the method a TAESD previewer and keeps its previews for the page's live view."""
        key = self._key(request)
        event = threading.Event()
        with self._lock:
            self._cancel[key] = event
        slot = self.previews.start(key) if previews else None

        sent = {"at": -float("inf"), "stage": None}

        def due(info: StepInfo) -> bool:
            now = time.monotonic()
            if info.stage == sent["stage"] and info.i < info.n and now - sent["at"] < self.progress_every_s:
                return False
            sent.update(at=now, stage=info.stage)
            return True

        def on_step(info: StepInfo) -> None:
            if event.is_set():
                raise Cancelled("stopped by the user")
            if progress is not None:
                if tracker is not None:
                    fraction, desc = tracker.update(info.stage, info.i, info.n)  # every step: its ETA
                    if due(info):
                        progress(fraction, desc=desc)
                elif due(info):
                    progress((info.i, info.n), desc=words(info.stage))
            if slot is not None and info.preview is not None:
                slot.show(info.preview)

        try:
            if slot is not None:
                on_step.previewer = self.previews.previewer()  # read by engine.methods.common.RunLog
                if on_step.previewer is None:  # off after all (TAESD missing): the page stops asking
                    slot.finish()
            with self._gpu:
                return self._execute(fn, args, dict(kwargs, on_step=on_step))
        except ValueError as exc:  # a user mistake, not a server fault: no traceback in the log
            raise gr.Error(str(exc), title="Please check the input", print_exception=False) from None
        except Cancelled:
            raise gr.Error("Stopped. The models are unchanged; run again when ready.", title="Stopped",
                           print_exception=False) from None
        except ModelUnavailable as exc:  # weights not on this machine: say which and how to get them
            raise gr.Error(str(exc), title="Models missing", print_exception=False) from None
        except torch.OutOfMemoryError:
            self.cache.clear()
            raise gr.Error(OOM_HINT, title="Out of GPU memory") from None
        except gr.Error:
            raise
        except Exception as exc:  # keep serving; the details go to the server log
            log.exception("edit failed")
            raise gr.Error(f"The edit failed: {type(exc).__name__}: {exc}", title="Error") from None
        finally:
            if slot is not None:
                slot.finish()
            with self._lock:
                if self._cancel.get(key) is event:
                    del self._cancel[key]

    def run(self, method: ModuleType, inputs, request: Optional[gr.Request] = None,
            progress: Any = None) -> EditResult:
        expected = self.timings.estimate(method.NAME, inputs)
        if expected is not None and expected >= LONG_RUN_S:
            gr.Info(f"This edit will take about {duration(expected)} (estimated from the last "
                    f"{getattr(method, 'TITLE', method.NAME)} run); Stop ends it at any step.")
        result = self.call(method.run, inputs, self.cache, request=request, progress=progress,
                           tracker=RunProgress(method.NAME, inputs, expected=expected), previews=True)
        self.timings.record(method.NAME, inputs, result.seconds.get("total", 0.0))
        compiled = getattr(self.cache, "compile_note", lambda: None)()
        if compiled:
            result.notes.append(compiled)
        quick = _quick_settings_used(method, inputs, self.cache.profile)
        if quick:
            result.notes.append(f"{self.cache.profile} profile's quick defaults: {quick}")
        if self.outputs is not None:
            try:
                paths = history.save(result, method.NAME, self.cache.profile, self.cache.describe(), self.outputs,
                                     inputs=inputs)
                result.notes.append(f"saved to {paths[0].parent.name}")
            except OSError as exc:  # a full disk must not lose the user's result on screen
                log.warning("could not save the result: %s", exc)
        return result


def _quick_settings_used(method: ModuleType, inputs, profile: str) -> str:
    """The profile's quick defaults this run used, with the paper's values ('' if none)."""
    from engine.profile_defaults import overrides, paper_defaults

    paper = paper_defaults(method)
    used = [f"{k} {v} (paper {paper[k]})" for k, v in overrides(method, profile).items()
            if getattr(inputs, k, None) == v]
    return ", ".join(used)


def _execute(fn, args, kwargs):
    """The one place engine work runs; on ZeroGPU it is wrapped by spaces.GPU (ui/zerogpu.py)."""
    return fn(*args, **kwargs)


def _estimate_seconds(fn, args, kwargs) -> float:
    """GPU time for a call: the method's own estimate_seconds(inputs) when it has one."""
    import inspect

    estimate = getattr(inspect.getmodule(fn), "estimate_seconds", None)
    if estimate is not None and args:
        return estimate(args[0])
    return zerogpu.DEFAULT_SECONDS

"""Live previews while an edit runs (issue 18): the latents of the running step, decoded by TAESD
(engine/core/previews.py), shown in a card floating in the window's corner (nothing on the page
moves), replaced about twice a second, gone when the run ends.

How it flows, without any Gradio event per preview:
- Edit's click runs a small page script first: it makes a random token, starts polling for it and
  sends it to `arm` (one request per click). `arm` ties this browser session's next run to a
  folder named by the token, under PREVIEW_ROOT (served by Gradio's file route: launch_kwargs
  adds it to allowed_paths), and writes `state.json` there.
- The runner gives a method run a `Previewer` when its session is armed; each preview is written
  as `<seq>.jpg` and `state.json` says the newest seq ("running"), then "ended".
- The page script fetches `state.json` every TICK_S and shows each new image in the card. It stops
  when the state says "ended", when the edit event has ended (`end_js`, chained after the edit by
  ui.components.wire_stop: an input the tab refused never starts a run) or when no state came
  within GIVE_UP_S (previews off).

Why not a gr.Timer: in Gradio 6.31 every backend event's status change makes the page ask each
component that has a loading status for its value, and an ImageEditor answers by uploading its
background, layer and composite again: two ticks a second re-uploaded the user's photo about ten
times a second and slowed the edit's own start by seconds on a loaded machine.

Previews need the TAESD weights (`--model taesd=FOLDER`, or the tiny and sd15-shape profiles'
random stand-ins); without them, and on ZeroGPU (the run is in another process), the studio runs
as before with no preview. `--no-previews` turns them off. API calls (no Edit click) are not
armed and pay nothing for previews.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import gradio as gr
from PIL import Image

log = logging.getLogger("studio")

TICK_S = 0.5        # how often the page asks for the newest preview
GIVE_UP_S = 20.0    # the page stops asking when no state has appeared by then (previews off)
STALE_S = 3600.0    # a folder untouched this long is removed (a run armed but never started)
PREVIEW_ROOT = Path(tempfile.gettempdir()) / "des-live-previews"
TOKEN = re.compile(r"[0-9a-f]{32}")


class Slot:
    """One armed run's folder: `state.json` and the newest previews as `<seq>.jpg`."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.seq = 0
        self.done = False
        folder.mkdir(parents=True, exist_ok=True)
        self._state("waiting")

    def _write(self, name: str, save) -> None:
        tmp = self.folder / f".{name}.tmp"
        save(tmp)
        os.replace(tmp, self.folder / name)  # the page never reads half a file

    def _state(self, state: str) -> None:
        text = json.dumps({"state": state, "seq": self.seq})
        self._write("state.json", lambda p: p.write_text(text))

    def start(self) -> None:
        self._state("running")

    def show(self, image: Image.Image) -> None:
        """Publish a preview (called from the run's step callback; never fails the run)."""
        if self.done:
            return
        try:
            self._write(f"{self.seq + 1}.jpg", lambda p: image.convert("RGB").save(p, "JPEG", quality=85))
            self.seq += 1
            self._state("running")
            (self.folder / f"{self.seq - 2}.jpg").unlink(missing_ok=True)  # the page may still load seq - 1
        except OSError as exc:  # a full disk: the edit goes on without previews
            log.warning("live preview not written: %s", exc)
            self.done = True

    def finish(self) -> None:
        self.done = True
        try:
            self._state("ended")
            for old in self.folder.glob("*.jpg"):
                old.unlink(missing_ok=True)
        except OSError:
            pass


class LivePreviews:
    """Per-session armed slots and the shared TAESD previewer factory (one per runner)."""

    def __init__(self, cache, enabled: bool = True, every_s: float = TICK_S, root: Path = PREVIEW_ROOT):
        self.cache = cache
        self.enabled = enabled
        self.every_s = every_s  # seconds between two previews of a run (no use in decoding faster than the page asks)
        self.root = root
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
    def arm(self, key: str, token: str) -> bool:
        """Tie the session's next run to the token's folder; False (nothing armed) when previews are
        off or the token is not one the page script makes."""
        if not self.enabled or not isinstance(token, str) or not TOKEN.fullmatch(token):
            return False
        self._sweep()
        with self._lock:
            old = self._slots.pop(key, None)
            if old is not None:
                old.finish()
            try:
                self._slots[key] = Slot(self.root / token)
            except OSError as exc:
                log.warning("live previews: cannot write under %s (%s)", self.root, exc)
                return False
        return True

    def start(self, key: str) -> Optional[Slot]:
        """The session's armed slot, now running; None when Edit's click did not arm one."""
        with self._lock:
            slot = self._slots.pop(key, None)
        if slot is not None:
            slot.start()
        return slot

    def _sweep(self) -> None:
        """Remove the folders of runs that ended a while ago or were armed and never started."""
        now = time.time()
        try:
            folders = list(self.root.iterdir())
        except OSError:
            return
        for folder in folders:
            try:
                state = json.loads((folder / "state.json").read_text()).get("state")
                age = now - (folder / "state.json").stat().st_mtime
            except (OSError, ValueError, AttributeError):  # no readable state: its folder's age decides
                try:              # (another session's arm may have made the folder a moment ago)
                    state, age = None, now - folder.stat().st_mtime
                except OSError:
                    continue
            if (state == "ended" and age > 60) or age > STALE_S:
                shutil.rmtree(folder, ignore_errors=True)


LIVE_JS = """
() => {
  if (window.desLive) return;
  const runs = {};
  const base = () => ((window.gradio_config && window.gradio_config.root) || (location.origin + location.pathname))
    .replace(/\\/+$/, '');
  const card = (prefix, make) => {
    let el = document.getElementById(prefix + '-live-preview');
    if (!el && make) {
      el = document.createElement('div');
      el.id = prefix + '-live-preview';
      el.className = 'des-live-preview';
      el.setAttribute('role', 'status');
      el.innerHTML = '<div class="des-live-title">Live preview (TAESD, while the edit runs)</div><img alt="live preview">';
      document.body.appendChild(el);
    }
    return el;
  };
  window.desLive = {
    token() {
      return Array.from(crypto.getRandomValues(new Uint8Array(16)), b => b.toString(16).padStart(2, '0')).join('');
    },
    start(prefix, folder, tick, giveUp) {
      this.end(prefix);
      const token = this.token();
      const run = runs[prefix] = {seq: 0, timer: null, since: Date.now(), stated: false};
      const url = (name) => `${base()}/gradio_api/file=${folder}/${token}/${name}`;
      const poll = async () => {
        if (runs[prefix] !== run) return;
        try {
          const r = await fetch(url('state.json') + '?t=' + Date.now(), {cache: 'no-store'});
          if (r.ok) {
            const s = await r.json();
            run.stated = true;
            if (s.state === 'ended') { this.end(prefix); return; }
            if (s.seq > run.seq && runs[prefix] === run) {
              run.seq = s.seq;
              card(prefix, true).querySelector('img').src = url(s.seq + '.jpg');
            }
          }
        } catch (e) {}
        if (!run.stated && Date.now() - run.since > giveUp * 1000) { this.end(prefix); return; }
        if (runs[prefix] === run) run.timer = setTimeout(poll, tick * 1000);
      };
      run.timer = setTimeout(poll, tick * 1000);
      return token;
    },
    end(prefix) {
      const run = runs[prefix];
      if (run) clearTimeout(run.timer);
      delete runs[prefix];
      const el = card(prefix, false);
      if (el) el.remove();
    },
  };
}
"""


def start_js(prefix: str, root: Path = PREVIEW_ROOT) -> str:
    """Edit's click: start polling for a new token and hand the token to `arm`."""
    args = json.dumps([prefix, root.as_posix(), TICK_S, GIVE_UP_S])[1:-1]
    return f"() => window.desLive ? window.desLive.start({args}) : ''"


def end_js(prefix: str) -> str:
    """After the edit event, whatever its outcome: stop polling and remove the card."""
    return f"() => {{ window.desLive && window.desLive.end({json.dumps(prefix)}); }}"


def live_preview(runner, prefix: str, run: gr.Button) -> Optional[gr.Textbox]:
    """Wire Edit's click to arm the session's live preview (call before the tab wires its edit
    event to `run`: the page runs a click's listeners in order). Returns the hidden token box (None
    with previews off)."""
    from ui.page_scripts import run_once_on_load

    previews = runner.previews
    if not previews.enabled:  # --no-previews: the page polls for nothing
        return None
    run_once_on_load(LIVE_JS)
    token = gr.Textbox(visible=False, elem_id=f"{prefix}-live-token")
    token.prefix = prefix

    def arm(token: str, request: gr.Request):
        previews.arm(runner._key(request), token)

    run.click(arm, token, None, js=start_js(prefix, previews.root), api_name=False, queue=False,
              show_progress="hidden")
    return token

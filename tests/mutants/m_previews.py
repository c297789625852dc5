"""Live previews' breakages (issue 18): TAESD decodes a running edit's latents, rate-limited, and the
page shows the newest one until the run ends (published as files the page polls) (tests/test_previews.py, tests/test_ui_live_preview.py)."""
from tests.mutants import Mutant

TESTS = ("tests/test_previews.py", "tests/test_ui_live_preview.py")
E = "tests/test_previews.py::"
U = "tests/test_ui_live_preview.py::"

MUTANTS = [
    Mutant("previews.runlog-drops-them", "engine/methods/common.py",
           "preview = self.previewer(latents) if self.previewer is not None and latents is not None else None",
           "preview = None", "the previewer on the callback is never used",
           (E + "test_a_run_with_a_previewer_gets_taesd_previews_and_the_same_result",)),
    Mutant("previews.sdedit-latents-not-passed", "engine/methods/sdedit.py",
           'on_step=lambda i, k, x: log.step("denoise", i, k, latents=x))',
           'on_step=lambda i, k, x: log.step("denoise", i, k))', "SDEdit's denoising loop gives no latents",
           (E + "test_a_run_with_a_previewer_gets_taesd_previews_and_the_same_result[sdedit]",)),
    Mutant("previews.not-rate-limited", "engine/core/previews.py",
           "        if not self.due():\n            return None\n", "",
           "a preview (and its host wait) at every step whatever the interval",
           (E + "test_previewer_decodes_with_taesd_at_most_once_per_interval",)),
    Mutant("previews.full-vae", "engine/core/previews.py",
           "image = tensor_to_pil(self.taesd.decode(z).sample)[0]",
           "image = tensor_to_pil(__import__('engine.models', fromlist=['x']).ModelCache('tiny', device='cpu')"
           ".get('sd').vae.decode(z.float() / 0.18215).sample)[0]",
           "previews decoded by the full VAE (the cost TAESD exists to avoid)",
           (E + "test_a_run_with_a_previewer_gets_taesd_previews_and_the_same_result[sdedit]",)),
    Mutant("previews.never-ended", "ui/live_preview.py",
           '            self._state("ended")\n', "            pass\n",
           "the page keeps asking for previews after the run",
           (U + "test_edit_arms_the_run_publishes_previews_and_the_end_says_ended",)),
    Mutant("previews.slot-never-started", "ui/runner.py",
           "        slot = self.previews.start(key) if previews else None\n",
           "        slot = None\n", "method runs keep no previews for the page",
           (U + "test_edit_arms_the_run_publishes_previews_and_the_end_says_ended",)),
    Mutant("previews.any-token", "ui/live_preview.py",
           "if not self.enabled or not isinstance(token, str) or not TOKEN.fullmatch(token):",
           "if not self.enabled:", "a folder named by whatever the client sends (a path, say)",
           (U + "test_tokens_the_page_would_not_make_are_refused",)),
    Mutant("previews.folder-not-served", "ui/__init__.py",
           "allowed = [str(CSS_PATH.parent), str(PREVIEW_ROOT)]", "allowed = [str(CSS_PATH.parent)]",
           "the page cannot fetch the previews",
           (U + "test_the_app_serves_a_runs_previews_and_nothing_else",)),
    Mutant("previews.end-not-chained", "ui/components.py",
           "        event.then(None, None, None, js=end_js(stop.live.prefix))\n", "        pass\n",
           "a refused input leaves the page polling", (U + "test_every_method_tab_arms_and_ends_its_preview",)),
]

"""ui/progress.py: one bar over a whole run, from the stages the engine reports one by one."""
from types import SimpleNamespace as N

from ui.progress import RunProgress, plan


def _feed(progress, stages):
    out = []
    for name, n in stages:
        for i in range(1, n + 1):
            out.append(progress.update(name, i, n))
    return out


def test_fraction_rises_over_all_stages_and_names_them_in_words():
    t = [0.0]
    p = RunProgress("pix2pix-zero", N(steps=10), clock=lambda: t[0])
    seen = []
    for name in ("inversion", "reconstruction", "edit"):
        for i in range(1, 11):
            t[0] += 1.0
            seen.append(p.update(name, i, 10))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert 0.1 < fractions[9] < 0.2  # the inversion is one sixth of the work: the guided edit costs 4x a step
    assert seen[0][1].startswith("Stage 1 of 3: Inverting the photo (DDIM) (1/10)")
    assert seen[-1][1].startswith("Stage 3 of 3: Editing (10/10)")
    assert "left" in seen[15][1] and "=" not in seen[15][1]


def test_a_stage_that_never_comes_is_dropped_and_an_unplanned_one_added():
    p = RunProgress("pix2pix-zero", N(steps=10))
    f, desc = p.update("edit", 5, 10)  # cached inversion: the edit comes first
    assert f == 0.5 and desc.startswith("Stage 1 of 1: Editing (5/10)")
    q = RunProgress("no-such-method", N())
    f, desc = q.update("frobnicate", 1, 4)
    assert f == 0.25 and "Frobnicate (1/4)" in desc


def test_plans_follow_the_inputs():
    assert plan("sdedit", N(steps=50, strength=0.7, num_results=1)) == [("denoise", 35, 1.0)]
    ito = [s for s, *_ in plan("ito", N(steps=25, encode_ratio=1.0, mask=None, mask_mode="replace",
                                         mask_encode_ratio=0.5, mask_seeds=10, lam=1.0))]
    assert ito == ["inversion", "mask", "edit"]  # lambda 1: no guidance pass
    ld = [s for s, *_ in plan("layer-diffusion", N(steps=50, embed_steps=5, tune_steps=5, reference=None,
                                                     keep_background=True, num_results=1))]
    assert ld == ["embedding optimisation", "fine-tuning", "sampling"]


def test_a_run_is_estimated_from_the_last_one_scaled_by_its_work():
    from ui.progress import Timings

    t = Timings()
    small = N(steps=10, strength=0.5, num_results=1, resolution=256)
    assert t.estimate("sdedit", small) is None  # nothing learned yet: no made-up number
    t.record("sdedit", small, 2.0)
    assert abs(t.estimate("sdedit", small) - 2.0) < 1e-9
    big = N(steps=50, strength=0.5, num_results=1, resolution=512)  # 5x the steps, 4x the pixels
    assert abs(t.estimate("sdedit", big) - 40.0) < 1e-9
    assert t.estimate("iedit", small) is None


def test_the_estimate_gives_the_time_left_until_the_runs_own_pace_is_known():
    clock = [0.0]
    p = RunProgress("sdedit", N(steps=100, strength=1.0, num_results=1), clock=lambda: clock[0], expected=50.0)
    clock[0] = 0.5
    _, desc = p.update("denoise", 1, 100)
    assert "about 50 s left" in desc


def test_the_runner_sends_progress_at_most_once_a_second_but_every_stage_and_its_end(tiny_models):
    """Each progress message makes Gradio 6.31's page re-upload the image editors' photos: a run's
    messages are rate-limited (ui.runner.PROGRESS_EVERY_S), but a new stage and the last step go out."""
    from engine.types import StepInfo
    from ui.runner import Runner

    runner = Runner(tiny_models, previews=False)

    def fn(on_step):
        for stage in ("inversion", "edit"):
            for i in range(1, 201):
                on_step(StepInfo(stage, i, 200))
        return "done"

    def sent_by(every_s):
        runner.progress_every_s = every_s
        calls = []
        assert runner.call(fn, progress=lambda value, desc=None: calls.append((value, desc))) == "done"
        return calls

    calls = sent_by(1.0)  # 400 steps in well under a second
    assert [c[0] for c in calls] == [(1, 200), (200, 200), (1, 200), (200, 200)], calls
    assert [c[1] for c in calls] == ["Inverting the photo (DDIM)"] * 2 + ["Editing"] * 2
    assert len(sent_by(0.0)) == 400  # unthrottled: every step

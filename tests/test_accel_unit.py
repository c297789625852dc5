"""engine/train/accel.py without processes: the data of a step, precision, checkpoints found."""
from __future__ import annotations

import json

import pytest
import torch

from engine.train import accel as A


def test_every_epoch_is_a_permutation_and_steps_draw_different_items():
    n, size = 5, 2
    seq = [i for step in range(10) for i in A.global_indices(n, seed=1, step=step, size=size)]
    for e in range(4):  # 20 positions = 4 epochs, each every item once
        assert sorted(seq[e * n:(e + 1) * n]) == list(range(n))
    assert seq[:n] != seq[n:2 * n]  # epochs are reshuffled
    assert A.global_indices(n, 1, 3, size) == seq[6:8]  # step s depends on (seed, s) only: resume is exact
    assert A.global_indices(n, 2, 0, 10) != seq[:10]


def test_two_ranks_split_a_global_batch_like_one_rank_with_the_whole_batch():
    data = list(range(100, 107))
    one = A.StepBatches(data, seed=0, start=0, steps=3, batch=4, accum=1, rank=0, world=1)
    two = [A.StepBatches(data, seed=0, start=0, steps=3, batch=2, accum=1, rank=r, world=2) for r in (0, 1)]
    for s in range(3):
        step, items = one[s]
        parts = two[0][s][1] + two[1][s][1]
        assert step == s and items == parts  # same (position, index, item) triples, in order
        assert [j for j, _, _ in items] == [0, 1, 2, 3]
    # accumulation: micro-batches of a step cover the same samples as one big batch
    acc = A.StepBatches(data, seed=0, start=0, steps=3, batch=2, accum=2, rank=0, world=1)
    assert acc[2][0] == 1 and acc[2][1] + acc[3][1] == one[1][1]
    # the per-sample stream depends on (seed, step, position) only
    a, b = A.sample_generator(0, 3, 1), A.sample_generator(0, 3, 1)
    assert torch.equal(torch.randn(4, generator=a), torch.randn(4, generator=b))
    assert not torch.equal(torch.randn(4, generator=A.sample_generator(0, 3, 2)), torch.randn(4, generator=a))
    with pytest.raises(ValueError, match="split"):
        A.rank_slice([1, 2, 3], 0, 2)


def test_precision_resolution_says_what_auto_means():
    assert A.resolve_precision("auto", "cpu") == ("no", "auto -> no: CPU training runs in fp32")
    assert A.resolve_precision("bf16", "cpu")[0] == "bf16"
    with pytest.raises(ValueError, match="fp16 needs a GPU"):
        A.resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="must be one of"):
        A.resolve_precision("fp8", "cpu")


def test_resume_latest_skips_interrupted_saves(tmp_path):
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step:06d}"
        folder.mkdir()
        if complete:
            (folder / A.PROGRESS).write_text(json.dumps({"step": step}))
    assert A.find_resume(tmp_path, "latest") == tmp_path / "checkpoint-000004"
    assert A.find_resume(tmp_path / "none", "latest") is None and A.find_resume(tmp_path, None) is None
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        A.find_resume(tmp_path, str(tmp_path / "checkpoint-000006"))
    A.prune(tmp_path, 1)
    assert [p.name for _, p in A.checkpoints(tmp_path)] == ["checkpoint-000004"]

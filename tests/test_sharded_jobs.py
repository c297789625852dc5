"""Per-item jobs split over processes (engine/train/shards.py): every item exactly once, a rerun
redoes only what is missing, the per-process manifests merge into one. bench.evaluate runs under
`accelerate launch --cpu --num_processes 2` and is then resumed by the plain one-process command."""
from __future__ import annotations

import json

import pytest
from PIL import Image, ImageDraw

from engine.train import shards as SH
from tests.launch_helpers import launch


def _job_step(out, rank, world, keys, ran, signature=None):
    job = SH.ShardedJob(out, signature=signature or {"job": 1}, rank=rank, world=world)
    for key in job.mine(keys):
        SH.write_atomic(out / "files" / f"{key}.txt", key.encode())
        job.finish(key, {"value": key.upper()}, [f"files/{key}.txt"])
        ran.append((rank, key))
    return job


def test_two_shards_cover_every_item_once_and_a_rerun_redoes_only_missing_ones(tmp_path):
    keys = [f"item{i:02d}" for i in range(7)]
    ran: list = []
    jobs = [_job_step(tmp_path, r, 2, keys, ran) for r in (0, 1)]
    assert sorted(k for _, k in ran) == keys  # every item once
    assert {k for r, k in ran if r == 0} == set(keys[0::2]) and {k for r, k in ran if r == 1} == set(keys[1::2])
    merged = jobs[0].merge(keys)
    assert [it["key"] for it in merged] == keys
    lines = (tmp_path / SH.MANIFEST).read_text().splitlines()
    assert [json.loads(line)["record"]["value"] for line in lines] == [k.upper() for k in keys]
    assert sorted(r["key"] for r in SH.read_parts(tmp_path)) == keys  # two per-process manifests, merged

    (tmp_path / "files" / "item03.txt").unlink()               # an output lost
    (tmp_path / SH.ITEMS / "item04.json").unlink()             # a record lost (killed before it)
    ran.clear()
    for r in (0, 1):
        _job_step(tmp_path, r, 2, keys, ran)
    assert sorted(k for _, k in ran) == ["item03", "item04"]
    ran.clear()
    _job_step(tmp_path, 0, 1, keys, ran)                       # one process, same folder: nothing left
    assert ran == []
    _job_step(tmp_path, 0, 1, keys, ran, signature={"job": 2})  # another job's settings: starts over
    assert [k for _, k in ran] == keys


def test_bad_keys_are_refused(tmp_path):
    job = SH.ShardedJob(tmp_path, rank=0, world=1)
    with pytest.raises(ValueError, match="unique"):
        job.mine(["a/b", "a b"])
    with pytest.raises(ValueError, match="usable"):
        job.mine(["..."])


@pytest.fixture(scope="module")
def four_photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos4")
    for i in range(4):
        im = Image.new("RGB", (64, 64), (40 + 50 * i, 120, 200 - 40 * i))
        ImageDraw.Draw(im).ellipse((14 + 3 * i, 14, 46, 52), fill=(220, 160, 90))
        im.save(folder / f"photo{i}.png")
    return folder


def test_evaluation_over_two_processes_then_resumed_on_one(four_photos, tmp_path, model_dir, tiny_models,
                                                            monkeypatch):
    from bench import evaluate as E

    tiny_models.sd()  # the tiny models exist on disk before two processes load them
    out = tmp_path / "eval"
    args = ["--method", "sdedit", "--task", "cat-dog", "--images", str(four_photos), "--out", str(out),
            "--profile", "tiny", "--device", "cpu", "--resolution", "64", "--set", "steps=2", "--baseline", "none"]
    done = launch("bench.evaluate", args, processes=2, env={"DES_CACHE_DIR": str(model_dir)})
    assert done.returncode == 0, done.stderr[-3000:]
    keys = [f"{i:03d}_photo{i}" for i in range(4)]
    parts = SH.read_parts(out)
    assert sorted(r["key"] for r in parts) == keys                  # every photo exactly once
    assert {r["process"] for r in parts} == {0, 1}                  # split over both processes
    assert len(list((out / SH.PARTS).glob("*.jsonl"))) == 2
    results = json.loads((out / "results.json").read_text())
    assert [c["seed"] for c in results["cases"]] == [0, 1, 2, 3] and results["processes"] == 2
    assert [json.loads(line)["key"] for line in (out / SH.MANIFEST).read_text().splitlines()] == keys
    assert done.stdout.count("# sdedit on cat-dog") == 1  # the report is printed by the main process only

    first = {k: (out / SH.ITEMS / f"{k}.json").stat().st_mtime_ns for k in keys}
    (out / results["cases"][1]["images"]["ours"]).unlink()   # an output deleted
    (out / SH.ITEMS / f"{keys[2]}.json").unlink()             # a record deleted
    monkeypatch.setenv("DES_CACHE_DIR", str(model_dir))
    old_parts = set((out / SH.PARTS).glob("*.jsonl"))
    assert E.main(args) == 0                                  # the same command, one process
    new_parts = set((out / SH.PARTS).glob("*.jsonl")) - old_parts
    redone = [json.loads(line)["key"] for f in new_parts for line in f.read_text().splitlines()]
    assert sorted(redone) == [keys[1], keys[2]]
    for k in (keys[0], keys[3]):                               # untouched items were not rewritten
        assert (out / SH.ITEMS / f"{k}.json").stat().st_mtime_ns == first[k]
    again = json.loads((out / "results.json").read_text())
    assert [c["seed"] for c in again["cases"]] == [0, 1, 2, 3] and again["processes"] == 1
    assert (out / again["cases"][1]["images"]["ours"]).is_file()


def test_pair_builder_over_two_processes_matches_one_and_resumes(tmp_path, model_dir, tiny_models):
    """engine.train.iedit_pairs under 2 processes writes the pairs file 1 process writes; a pair
    whose record is deleted is the only one redone by the rerun."""
    tiny_models.sd()
    folder = tmp_path / "imgs"
    folder.mkdir()
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    captions = {}
    for c, rgb in colours.items():
        for shape in ("circle", "square"):
            im = Image.new("RGB", (64, 64), (240, 240, 240))
            (ImageDraw.Draw(im).ellipse if shape == "circle" else ImageDraw.Draw(im).rectangle)((16, 16, 48, 48),
                                                                                             fill=rgb)
            im.save(folder / f"{c}_{shape}.png")
            captions[f"{c}_{shape}.png"] = f"a photo of a {c} {shape}"
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    (tmp_path / "lex.json").write_text(json.dumps({"nouns": {"circle": ["square"], "square": ["circle"]},
                                                   "adjectives": {c: [d for d in colours if d != c] for c in colours}}))
    env = {"DES_CACHE_DIR": str(model_dir)}

    def args(out):
        return ["--images", str(folder), "--out", str(out), "--captions", str(tmp_path / "captions.json"),
                "--lexicon", str(tmp_path / "lex.json"), "--profile", "tiny", "--device", "cpu"]

    one = launch("engine.train.iedit_pairs", args(tmp_path / "one" / "pairs.jsonl"), processes=1, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = launch("engine.train.iedit_pairs", args(tmp_path / "two" / "pairs.jsonl"), processes=2, env=env)
    assert two.returncode == 0, two.stderr[-3000:]

    def rows(root):
        out = []
        for line in (root / "pairs.jsonl").read_text().splitlines():
            r = json.loads(line)
            out.append((r["source"], r["target"], r["edit_prompt"]))
        return out

    assert rows(tmp_path / "one") == rows(tmp_path / "two") and len(rows(tmp_path / "one")) == 6
    work = tmp_path / "two" / "pairs_work"
    assert {r["process"] for r in SH.read_parts(work / "pairs")} == {0, 1}
    assert sorted(r["key"] for r in SH.read_parts(work / "images")) == sorted(captions)  # each image once
    (work / "pairs" / SH.ITEMS / "blue_circle.png.json").unlink()
    (tmp_path / "two" / "pairs.jsonl").unlink()
    before = set((work / "pairs" / SH.PARTS).glob("*.jsonl"))
    again = launch("engine.train.iedit_pairs", args(tmp_path / "two" / "pairs.jsonl"), processes=2, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    redone = [json.loads(line)["key"] for f in set((work / "pairs" / SH.PARTS).glob("*.jsonl")) - before
              for line in f.read_text().splitlines()]
    assert redone == ["blue_circle.png"]
    assert rows(tmp_path / "two") == rows(tmp_path / "one")

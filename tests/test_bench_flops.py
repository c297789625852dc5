"""bench/flops.py: the hook sees every costed call with its batch and backward kind, the per-sample
FLOPs of the SD1.5-shaped networks are in the right range, and rows land in their own table."""
from __future__ import annotations

import torch

from bench import flops
from bench import results as results_md


def test_per_sample_flops_of_sd15_shaped_networks():
    per = flops.per_sample_tflops(512)
    # SD1.5's UNet is about 0.8 TFLOP a sample at 512 px; a ControlNet is its encoder half plus hints.
    assert 0.7 < per[("unet", "fwd")] < 0.9
    assert 0.25 * per[("unet", "fwd")] < per[("controlnet", "fwd")] < 0.5 * per[("unet", "fwd")]
    # Gradients to the inputs cost about a forward; to the weights as well, about two.
    for kind in ("unet", "controlnet"):
        fwd = per[(kind, "fwd")]
        assert 0.9 * fwd < per[(kind, "bwd_input")] < 1.3 * fwd
        assert 1.8 * fwd < per[(kind, "bwd_weights")] < 2.5 * fwd
    assert per[("vae_decoder", "fwd")] > per[("vae_encoder", "fwd")] > per[("unet", "fwd")]
    # Convolutions scale with the pixels, attention faster: a quarter of the pixels costs at most a quarter.
    assert 0.15 < flops.per_sample_tflops(256)[("unet", "fwd")] / per[("unet", "fwd")] <= 0.25


def test_recorder_counts_samples_and_backward_kinds(tiny_models):
    sd = tiny_models.sd()
    unet = sd.unet
    cond = torch.zeros(3, 77, unet.config.cross_attention_dim)
    x = torch.randn(3, 4, 8, 8)
    with flops.CallRecorder() as rec:
        with torch.no_grad():
            unet(x, 10, cond)
        unet(x.clone().requires_grad_(True), 10, cond)              # p2pz-style: gradient to the latents
        unet.requires_grad_(True)
        try:
            unet(x[:2], 10, cond[:2])                                   # fine-tuning: gradient to the weights
        finally:
            unet.requires_grad_(False)
        sd.vae.decode(x[:1])
    unet(x, 10, cond)  # outside the context: not recorded
    assert rec.calls["unet"] == 3 and rec.calls["vae_decoder"] == 1
    assert rec.samples[("unet", "fwd")] == 8
    assert rec.samples[("unet", "bwd_input")] == 3 and rec.samples[("unet", "bwd_weights")] == 2
    t = flops.tally(rec, 512)
    per = flops.per_sample_tflops(512)
    assert abs(t["total"] - (8 * per[("unet", "fwd")] + 3 * per[("unet", "bwd_input")]
                             + 2 * per[("unet", "bwd_weights")] + per[("vae_decoder", "fwd")])) < 1e-9
    assert t["h100_s"] == t["total"] / flops.H100_SXM_FP16_TFLOPS and (t["unet_fwd"], t["unet_bwd"]) == (8, 5)


def test_cli_counts_sdedit_and_appends_rows_to_its_own_table(tiny_models, model_dir, tmp_path, monkeypatch,
                                                              capsys):
    results = tmp_path / "RESULTS.md"
    results.write_text("# Measured\n\n## Latency\n\n| a |\n|---|\n| row |\n")
    monkeypatch.setattr(results_md, "RESULTS", results)
    monkeypatch.setenv("DES_CACHE_DIR", str(model_dir))  # the session's tiny models, not rebuilt
    argv = ["sdedit", "--image", "assets/examples/cat.png", "--prompt", "a dog", "--steps", "4", "--strength", "0.5",
            "--cfg", "7.5"]
    assert flops.main(argv) == 0 and flops.main(argv + ["--px", "256"]) == 0
    text = results.read_text()
    assert text.startswith("# Measured\n\n## Latency\n\n| a |\n|---|\n| row |\n")  # the other table untouched
    section = text.split(flops.SECTION)[1]
    rows = [line for line in section.splitlines() if line.startswith("| 20")]
    assert len(rows) == 2 and "| sdedit | 512 |" in rows[0] and "| sdedit | 256 |" in rows[1]
    # 2 denoising steps with CFG (batch 2), one VAE encode and one decode, the prompt and the empty prompt encoded apart.
    assert "| 2 / 0 / 1 / 1 / 2 | 4 / 0 |" in rows[0]
    assert flops.main(argv + ["--px", "100"]) == 2 and flops.main(argv + ["--profile", "sd15"]) == 2
    # The method's own checks: one readable line and exit code 2, as with `python -m engine`.
    bad = ["iedit", "--image", "assets/examples/cat.png", "--prompt", "a dog", "--mask", "assets/examples/grass.png"]
    assert results_md.run_cli(lambda: flops.main(bad)) == 2
    assert "error: mask is 512x512 but the photo is 64x40" in capsys.readouterr().err


def test_rows_go_to_the_end_of_their_own_section_table(tmp_path):
    path = tmp_path / "R.md"
    path.write_text("# T\n\n## A\n\nintro A\n\n| h |\n|---|\n| a1 |\n\n## B\n\nno table yet\n")
    results_md.add_row("## A", "| h |\n|---|\n", "| a2 |", path=path)
    results_md.add_row("## B", "| g |\n|---|\n", "| b1 |", intro="about B", path=path)
    results_md.add_row("## C", "| k |\n|---|\n", "| c1 |", path=path)
    results_md.add_row("## A", "| h |\n|---|\n", "| a3 |", path=path)
    assert path.read_text() == ("# T\n\n## A\n\nintro A\n\n| h |\n|---|\n| a1 |\n| a2 |\n| a3 |\n\n## B\n\n"
                                "no table yet\n\nabout B\n\n| g |\n|---|\n| b1 |\n\n## C\n\n| k |\n|---|\n| c1 |\n")
    assert results_md.numbers({"a": 1, "b": 0.123456, "flag": True, "text": "x", "skip": 2}, skip=("skip",)) == \
        {"a": 1, "b": 0.1235}

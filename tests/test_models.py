"""The model cache: tiny models written with save_pretrained and loaded back through the same
from_pretrained code as real weights; lazy, shared, nothing loaded at import."""
import subprocess
import sys

import pytest
import torch

from engine.models import COMPONENTS, ModelCache


def test_tiny_sd_loads_from_a_local_folder(tiny_models, model_dir):
    sd = tiny_models.sd()
    folders = list((model_dir / "tiny").glob("sd-*"))
    assert len(folders) == 1
    folder = folders[0]
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / sub).is_dir(), sub
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert sd.source == str(folder)  # loaded from the folder, not built in memory
    assert sd.unet.dtype == torch.float32 and sd.unet.device.type == "cpu"
    assert not any(p.requires_grad for p in sd.unet.parameters())
    assert tiny_models.sd() is sd  # loaded once, shared


def test_a_second_cache_reuses_the_written_folder(model_dir):
    tiny_models_2 = ModelCache("tiny", device="cpu", cache_dir=model_dir)
    first = tiny_models_2.sd()
    again = ModelCache("tiny", device="cpu", cache_dir=model_dir).sd()
    for a, b in zip(first.unet.state_dict().values(), again.unet.state_dict().values()):
        assert torch.equal(a, b)  # fixed seed + same files -> same weights


def test_tokenizer_works_offline(tiny_models):
    tok = tiny_models.sd().tokenizer
    ids = tok("a photo of a cat").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) > 3


def test_sources_and_overrides(monkeypatch):
    cache = ModelCache("sd15", device="cpu")
    assert cache.source("sd") == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    monkeypatch.setenv("DES_MODEL_SD", "/models/sd15")
    assert cache.source("sd") == "/models/sd15"
    flagged = ModelCache("sd15", device="cpu", overrides={"sd": "/other"})
    assert flagged.source("sd") == "/other"  # a flag beats the environment
    assert cache.describe()["sam"] == COMPONENTS["sam"].hub_id
    assert cache.loaded() == []


@pytest.mark.parametrize("kwargs, message", [
    ({"profile": "sd21"}, "unknown profile"),
    ({"memory": "disk"}, "unknown memory mode"),
    ({"overrides": {"unet2": "x"}}, "unknown model component"),
    ({"compile_backend": "fastest"}, "unknown compile backend"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelCache(**kwargs)


def test_missing_real_weights_fail_clearly_offline(tmp_path):
    cache = ModelCache("sd15", device="cpu", overrides={"sd": str(tmp_path / "nowhere")})
    with pytest.raises(Exception):
        cache.sd()
    assert cache.loaded() == []


def test_importing_engine_and_ui_loads_nothing():
    code = ("import torch, engine, engine.models, engine.methods, engine.__main__, ui, ui.components, app;"
            "import engine.methods as m; m.available();"
            "assert not torch.cuda.is_initialized(); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout

"""Cross-attention capture: probabilities of cross-attention layers only, processors restored."""
import pytest
import torch

from engine.core import sampling as S
from engine.core.attention import capture_cross_attention


def test_capture_cross_attention_and_restore(tiny_models):
    sd = tiny_models.sd()
    unet = sd.unet
    before = dict(unet.attn_processors)
    maps = {}
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = S.encode_prompts(sd, ["a cat"])
    with torch.no_grad():
        plain = unet(x, 10, encoder_hidden_states=cond).sample
        with capture_cross_attention(unet, lambda name, p: maps.__setitem__(name, p)):
            probed = unet(x, 10, encoder_hidden_states=cond).sample
    assert maps and all(name.endswith("attn2.processor") for name in maps)
    assert len(maps) == sum(name.endswith("attn2.processor") for name in before)
    for p in maps.values():
        assert p.shape[-1] == 77 and p.shape[0] == 1
        assert torch.allclose(p.sum(-1), torch.ones(()), atol=1e-5)
    assert torch.allclose(plain, probed, atol=1e-4)  # explicit attention == SDPA
    after = unet.attn_processors
    assert all(after[k] is before[k] for k in before)


def test_processors_restored_when_the_body_raises(tiny_models):
    unet = tiny_models.sd().unet
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError):
        with capture_cross_attention(unet, lambda *_: None):
            raise RuntimeError("boom")
    after = unet.attn_processors
    assert all(after[k] is before[k] for k in before)

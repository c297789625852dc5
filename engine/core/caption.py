"""BLIP captioning (Li et al., 2022): pix2pix-zero's prompt c comes from the photo itself (Sec. 3).

`load_blip(source, device, dtype)` is the ModelCache loader of the "blip" component
(`Salesforce/blip-image-captioning-base` in the sd15 profile, a tiny random BLIP in `tiny`);
`caption(blip, image)` returns one lower-case sentence. Both the model and its processor come
from `from_pretrained`, so the tiny model written by `engine.tiny.blip` travels the same path
as the real weights.
"""
from __future__ import annotations


import torch
from PIL import Image

from engine.core.bundle import ModelBundle, load_bundle


Blip = ModelBundle  # BlipForConditionalGeneration + BlipProcessor


def load_blip(source: str, device: torch.device, dtype: torch.dtype) -> Blip:
    """BLIP image captioning from a hub id or a local folder (model + processor side by side)."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    return load_bundle(BlipForConditionalGeneration, BlipProcessor, source, device, dtype)


@torch.no_grad()
def caption(blip: Blip, image: Image.Image, max_new_tokens: int = 30) -> str:
    """One caption for `image` (greedy decoding, at most `max_new_tokens` tokens, so it always ends)."""
    if not isinstance(image, Image.Image):
        raise ValueError("caption() needs a PIL image")
    inputs = blip.processor(images=image.convert("RGB"), return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(blip.device, blip.dtype)
    out = blip.model.generate(pixel_values=pixel_values, max_new_tokens=int(max_new_tokens), do_sample=False,
                              num_beams=1)
    text = blip.processor.batch_decode(out, skip_special_tokens=True)[0]
    return " ".join(text.split())

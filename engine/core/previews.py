"""Live previews of a run through TAESD (the tiny autoencoder, diffusers' AutoencoderTiny; issue 18).

The SD VAE's decoder is a large network run at full image size (bench/flops.py counts its calls
beside the UNet's); TAESD decodes the same latents to a rough image with a few small convolutions. A `Previewer` turns the latents of a step into
a PIL image at most once per `every_s` seconds: the step loop hands its latents to
`RunLog.step(..., latents=x)`, and only a run that asked for previews (the app) decodes them. Each
preview reads one image back from the device (a host wait), so previews are rate-limited; a run
without a previewer (the CLI, tests, benchmarks) does no preview work at all.
"""
from __future__ import annotations

import time
from typing import Optional

import torch
import torch.nn.functional as F
from PIL import Image


class Previewer:
    """latents (B, 4, h, w) in the UNet's space -> the first sample's TAESD image, rate-limited, at most
    `max_side` pixels on its longest side (the latents are resized first, so a 1024 px edit's preview
    costs a 256 px decode)."""

    def __init__(self, taesd, every_s: float = 0.5, max_side: int = 256):
        self.taesd = taesd
        self.every_s = float(every_s)
        self.max_side = int(max_side)
        self._last = -float("inf")
        self.count = 0

    def due(self) -> bool:
        return time.perf_counter() - self._last >= self.every_s

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> Optional[Image.Image]:
        if not self.due():
            return None
        self._last = time.perf_counter()
        from engine.core.sampling import tensor_to_pil

        param = next(self.taesd.parameters())
        z = latents[:1].detach().to(param.device, param.dtype)
        h, w = z.shape[-2:]
        if 8 * max(h, w) > self.max_side:  # a preview, not the result: decode it small (8x fewer pixels per side)
            scale = self.max_side / (8 * max(h, w))
            z = F.interpolate(z, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="bilinear",
                              align_corners=False)
        # TAESD decodes the UNet's latents as they are (its scaling factor is 1) to [-1, 1].
        image = tensor_to_pil(self.taesd.decode(z).sample)[0]
        self.count += 1
        return image

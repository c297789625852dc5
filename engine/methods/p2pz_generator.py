"""pix2pix-zero's distilled model (Sec. 4.5, Appendix A): an image-conditional GAN generator in the
spirit of Co-Mod-GAN (Zhao et al., ICLR 2021), its patch discriminator, and its checkpoint format.

Generator (`DistilledGenerator`), Co-Mod-GAN's structure at a size that runs in real time:
- an encoder E of stride-2 convolutions (the skip features of every level are kept);
- the conditional code E(y): the encoder's last features pooled and projected to `style_dim`;
- the stochastic code M(z): a mapping MLP of a latent z (z = 0 at inference, so an edit is
  deterministic; training draws z ~ N(0, I));
- co-modulation: every decoder convolution is a StyleGAN2 modulated convolution whose style is
  an affine map of the concatenation [E(y), M(z)] (Co-Mod-GAN Eq. 3), with weight demodulation;
- a decoder that upsamples, concatenates the encoder's skip of the same level (U-Net) and applies
  the modulated convolutions; a final 1x1 convolution predicts a residual added to the input
  photo (the edit changes a part of the photo; the rest is copied), clamped to [-1, 1] in eval
  mode (in training the losses see it unclamped: a clamp has no gradient past [-1, 1]).
Images are tensors in [-1, 1], (B, 3, H, W), with H and W multiples of 2**depth.

Discriminator (`PatchDiscriminator`): a pix2pix-style PatchGAN on the (input, output) pair,
so it judges whether the output is a plausible edit *of that input*.

Checkpoint: a folder with `generator.safetensors` (weights only; pickles are refused, they can
run code when loaded) and `distilled.json`:
    {"format": "des-p2pz-distilled", "version": 1,
     "direction": {"source": "cat", "target": "dog"},
     "resolution": 256,                      # the longest side it was trained at
     "generator": {"base": 16, "depth": 5, "style_dim": 256, "max_channels": 256},
     "training": {...}}                      # free-form: pairs, steps, losses (for the UI's notes)
`load_checkpoint(path)` checks every field and the weights' names and shapes before use and
raises ValueError with a sentence a user can act on.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

FORMAT = "des-p2pz-distilled"
VERSION = 1
META = "distilled.json"
WEIGHTS = "generator.safetensors"
PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"}
MIN_RESOLUTION, MAX_RESOLUTION = 32, 2048


@dataclass(frozen=True)
class GeneratorConfig:
    """The generator's size: `base` channels at full resolution, doubling per level up to
    `max_channels`, over `depth` stride-2 levels; `style_dim` is the size of E(y) and M(z)."""

    base: int = 16
    depth: int = 5
    style_dim: int = 256
    max_channels: int = 256

    def channels(self, level: int) -> int:
        return min(self.base * 2 ** level, self.max_channels)

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (every level halves them)."""
        return 2 ** self.depth

    def check(self, where: str = "generator") -> "GeneratorConfig":
        for name, lo, hi in (("base", 4, 256), ("depth", 1, 8), ("style_dim", 8, 1024), ("max_channels", 8, 1024)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
                raise ValueError(f"{where}: '{name}' must be a whole number from {lo} to {hi}, got {value!r}")
        return self


# Sizes offered by the trainer (`--size`): "small" is the real-time default.
SIZES = {"small": GeneratorConfig(16, 5, 256, 256), "base": GeneratorConfig(32, 5, 512, 512)}


class ModulatedConv(nn.Module):
    """StyleGAN2's modulated convolution (Karras et al., 2020, Eq. 1-3): w'_ijk = s_i w_ijk, then
    demodulated by 1/sqrt(sum_ik w'^2 + eps), with the per-sample style s from an affine map of
    the co-modulation vector [E(y), M(z)]."""

    def __init__(self, cin: int, cout: int, style_in: int, kernel: int = 3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel) / math.sqrt(cin * kernel * kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.affine = nn.Linear(style_in, cin)
        nn.init.zeros_(self.affine.weight)
        nn.init.ones_(self.affine.bias)  # start as an ordinary convolution (s = 1)
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        b, cin, h, w = x.shape
        s = self.affine(style)  # (B, cin)
        weight = self.weight[None] * s[:, None, :, None, None]  # modulation
        weight = weight * torch.rsqrt(weight.pow(2).sum(dim=(2, 3, 4), keepdim=True) + 1e-8)  # demodulation
        out = F.conv2d(x.reshape(1, b * cin, h, w), weight.reshape(-1, cin, *weight.shape[3:]),
                       padding=self.padding, groups=b)
        return out.reshape(b, -1, h, w) + self.bias[None, :, None, None]


class DistilledGenerator(nn.Module):
    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.config = config.check()
        c = config.channels
        self.from_rgb = nn.Conv2d(3, c(0), 3, padding=1)
        self.down = nn.ModuleList(nn.Conv2d(c(i), c(i + 1), 4, stride=2, padding=1) for i in range(config.depth))
        self.encode_code = nn.Linear(c(config.depth), config.style_dim)  # E(y)
        self.mapping = nn.Sequential(nn.Linear(config.style_dim, config.style_dim), nn.LeakyReLU(0.2),
                                     nn.Linear(config.style_dim, config.style_dim))  # M(z)
        style_in = 2 * config.style_dim  # co-modulation: [E(y), M(z)]
        self.bottleneck = ModulatedConv(c(config.depth), c(config.depth), style_in)
        # decoder level i (from the deepest): upsample c(i+1) -> concat skip c(i) -> modulated conv -> c(i)
        self.up = nn.ModuleList(ModulatedConv(c(i + 1) + c(i), c(i), style_in) for i in reversed(range(config.depth)))
        self.to_rgb = nn.Conv2d(c(0), 3, 1)
        nn.init.zeros_(self.to_rgb.weight)  # an untrained generator returns its input
        nn.init.zeros_(self.to_rgb.bias)

    def check_size(self, x: torch.Tensor) -> None:
        m = self.config.multiple
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] % m or x.shape[3] % m:
            raise ValueError(f"the generator takes (B, 3, H, W) images with H and W multiples of {m}, "
                             f"got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, z: Optional[torch.Tensor] = None) -> torch.Tensor:
        self.check_size(x)
        act = nn.functional.leaky_relu
        h = act(self.from_rgb(x), 0.2)
        skips = [h]
        for conv in self.down:
            h = act(conv(h), 0.2)
            skips.append(h)
        code = self.encode_code(h.mean(dim=(2, 3)))  # E(y)
        if z is None:
            z = torch.zeros_like(code)
        style = torch.cat([code, self.mapping(z)], dim=1)  # co-modulation vector
        h = act(self.bottleneck(h, style), 0.2)
        for conv, skip in zip(self.up, reversed(skips[:-1])):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = act(conv(torch.cat([h, skip], dim=1), style), 0.2)
        out = x + self.to_rgb(h)
        # clamped for use; in training the losses see the unclamped output, since a clamp's zero
        # gradient outside [-1, 1] would stop every pixel that overshoots from ever coming back
        return out if self.training else out.clamp(-1, 1)


class PatchDiscriminator(nn.Module):
    """pix2pix's 70x70-style PatchGAN (Isola et al., 2017) on the channel-concatenated
    (input, output) pair: one real/fake logit per overlapping patch."""

    def __init__(self, base: int = 32, layers: int = 3):
        super().__init__()
        blocks, cin = [], 6
        for i in range(layers):
            cout = base * 2 ** i
            blocks += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            cin = cout
        blocks += [nn.Conv2d(cin, cin, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(cin, 1, 3, padding=1)]
        self.net = nn.Sequential(*blocks)

    def forward(self, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([source, image], dim=1))


# -- checkpoints -------------------------------------------------------------------------------

@dataclass(frozen=True)
class DistilledMeta:
    source: str
    target: str
    resolution: int
    generator: GeneratorConfig
    training: dict = field(default_factory=dict)

    @property
    def direction(self) -> str:
        return f"{self.source} -> {self.target}"

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "direction": {"source": self.source, "target": self.target},
                "resolution": self.resolution, "generator": asdict(self.generator), "training": self.training}


def parse_meta(data, where: str) -> DistilledMeta:
    """Check a distilled.json's content; a malformed one is a ValueError naming the field."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} is not a JSON object")
    if data.get("format") != FORMAT:
        raise ValueError(f"{where} is not a distilled pix2pix-zero checkpoint (format {data.get('format')!r}, "
                         f"expected {FORMAT!r})")
    if data.get("version") != VERSION:
        raise ValueError(f"{where}: version {data.get('version')!r} is not supported (this studio reads {VERSION})")
    direction = data.get("direction")
    if not isinstance(direction, dict) or not all(isinstance(direction.get(k), str) and direction[k].strip()
                                                  for k in ("source", "target")):
        raise ValueError(f'{where}: "direction" must be {{"source": "cat", "target": "dog"}}')
    gen = data.get("generator")
    if not isinstance(gen, dict) or set(gen) - set(GeneratorConfig.__dataclass_fields__):
        raise ValueError(f'{where}: "generator" must hold {", ".join(GeneratorConfig.__dataclass_fields__)}')
    config = GeneratorConfig(**gen).check(f"{where} generator")
    res = data.get("resolution")
    if not isinstance(res, int) or isinstance(res, bool) or not MIN_RESOLUTION <= res <= MAX_RESOLUTION:
        raise ValueError(f"{where}: resolution must be a whole number of pixels from {MIN_RESOLUTION} to "
                         f"{MAX_RESOLUTION}, got {res!r}")
    if res % config.multiple:
        raise ValueError(f"{where}: resolution {res} is not a multiple of {config.multiple}, which a generator "
                         f"of depth {config.depth} needs")
    training = data.get("training", {})
    if not isinstance(training, dict):
        raise ValueError(f'{where}: "training" must be a JSON object')
    return DistilledMeta(direction["source"].strip(), direction["target"].strip(), res, config, training)


def save_checkpoint(generator: DistilledGenerator, meta: DistilledMeta, folder) -> Path:
    """Write the folder atomically enough for a reader: the weights first, the JSON last."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().cpu().contiguous() for k, v in generator.state_dict().items()}
    tmp = folder / f".{WEIGHTS}.tmp"
    save_file(state, str(tmp), metadata={"format": FORMAT})
    tmp.replace(folder / WEIGHTS)
    tmp = folder / f".{META}.tmp"
    tmp.write_text(json.dumps(meta.to_json(), indent=2))
    tmp.replace(folder / META)
    return folder


def inspect_checkpoint(path) -> tuple[Path, DistilledMeta]:
    """Check a checkpoint folder without loading weights: (folder, meta)."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ValueError(f"{path.name} is a pickle file, which can run code when loaded; distilled "
                             f"checkpoints are read in safetensors only (a folder with {META} and {WEIGHTS})")
        if path.name in (META, WEIGHTS):
            path = path.parent
        else:
            raise ValueError(f"{path} is a file; point to the folder that holds {META} and {WEIGHTS}")
    if not path.is_dir():
        raise ValueError(f"no distilled checkpoint folder at {path}")
    meta_file = path / META
    if not meta_file.is_file():
        raise ValueError(f"{path} is not a distilled pix2pix-zero checkpoint: {META} is missing "
                         "(train one with `python -m engine.train.p2pz_distill train`)")
    try:
        data = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{meta_file} is not valid JSON ({exc})") from None
    meta = parse_meta(data, str(meta_file))
    if not (path / WEIGHTS).is_file():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise ValueError(f"{path} holds pickle weights ({', '.join(pickles)}), which can run code when "
                             f"loaded; this studio loads {WEIGHTS} (safetensors) only")
        raise ValueError(f"{path} is not a distilled pix2pix-zero checkpoint: {WEIGHTS} is missing")
    return path, meta


def load_checkpoint(path, device="cpu", dtype=torch.float32) -> tuple[DistilledGenerator, DistilledMeta]:
    """The generator (eval mode, no grad) and its meta; ValueError for anything malformed."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder, meta = inspect_checkpoint(path)
    try:
        state = load_file(str(folder / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{folder / WEIGHTS} is not a readable safetensors file ({exc})") from None
    generator = DistilledGenerator(meta.generator)
    expected = generator.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
    if missing or extra or wrong:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}{'...' if len(keys) > 3 else ''}"
                           for label, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
                           if keys)
        raise ValueError(f"{folder / WEIGHTS} does not match the generator that {META} describes ({detail})")
    generator.load_state_dict(state)
    generator.requires_grad_(False).eval()
    return generator.to(device=device, dtype=dtype), meta


def list_checkpoints(folder) -> list[tuple[Path, DistilledMeta]]:
    """Every readable checkpoint in `folder` (the folder itself or its direct subfolders), by
    direction then path; unreadable ones are skipped (they are reported when chosen by path)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return []
    found = []
    for candidate in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        if (candidate / META).is_file():
            try:
                found.append(inspect_checkpoint(candidate))
            except ValueError:
                continue
    return sorted(found, key=lambda item: (item[1].direction, str(item[0])))


# -- images ----------------------------------------------------------------------------------

def working_size(size: tuple[int, int], resolution: int, multiple: int) -> tuple[int, int]:
    """(W, H) with the longest side at `resolution` and both sides multiples of `multiple`."""
    w, h = size
    scale = resolution / max(w, h)
    return (max(multiple, round(w * scale / multiple) * multiple),
            max(multiple, round(h * scale / multiple) * multiple))


def to_tensor(image: Image.Image, device="cpu", dtype=torch.float32) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)[None].to(device=device, dtype=dtype)


def to_image(x: torch.Tensor) -> Image.Image:
    array = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


@torch.no_grad()
def apply(generator: DistilledGenerator, image: Image.Image, resolution: int) -> Image.Image:
    """The distilled edit of one photo at the checkpoint's resolution (longest side)."""
    size = working_size(image.size, resolution, generator.config.multiple)
    param = next(generator.parameters())
    x = to_tensor(image.convert("RGB").resize(size, Image.LANCZOS), param.device, param.dtype)
    return to_image(generator(x))

"""A toy DiT-shaped surrogate whose block outputs are real-size (millions of elements), for half-precision tests.

Not an I2V model: a linear patch embedding of the image (the "VAE"), then token-wise MLP blocks that see the
noisy latent tokens plus the image tokens. One block output has ``tokens * width`` elements: at 256 x 256 pixels
with patch 1 and width 64 that is 4.2 M, the order of one CogVideoX-5B block at 13 latent frames (1e7-5e7).
"""

from __future__ import annotations

import torch
from torch import nn

from anti_i2v.surrogates.base import Conditioning, NoiseDraw, Surrogate


class ToyDiT(Surrogate):
    family = "toy-dit"

    def __init__(self, size: int = 256, width: int = 64, num_blocks: int = 3, *, dtype=torch.float32) -> None:
        super().__init__(num_frames=1, dtype=dtype)
        self.default_size = (size, size)
        g = torch.Generator().manual_seed(0)
        self.embed = nn.Linear(3, width)
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(num_blocks)])
        for p in list(self.embed.parameters()) + list(self.blocks.parameters()):
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        for m in (self.embed, self.blocks):
            m.to(dtype)
        self.width = width

    def denoiser(self):
        return self.blocks

    def denoiser_blocks(self):
        return [(f"blocks.{i}", b) for i, b in enumerate(self.blocks)]

    def vae_encoder_layers(self):
        return [("embed", self.embed)]

    def modules(self):
        return [self.embed, self.blocks]

    def sample_noise(self, batch, generator):
        h, w = self.default_size
        t = torch.randint(0, 1000, (batch,), generator=generator)
        return NoiseDraw(timestep=t, noise=torch.randn(batch, h * w, self.width, generator=generator))

    def encode(self, image):
        tokens = image.flatten(2).transpose(1, 2) * 2 - 1  # (B, HW, 3)
        z = self.embed(tokens.to(self.dtype))
        return Conditioning(latent=z, parts={"tokens": z})

    def clean_latent(self, cond):
        return cond.latent.float()

    def noisy_latent(self, x0, draw: NoiseDraw):
        a = (draw.timestep.float() / 1000).view(-1, 1, 1)
        return (1 - a) * x0 + a * draw.noise

    def prediction_target(self, x0, draw: NoiseDraw):
        return draw.noise

    def denoise(self, cond, noisy, draw):
        x = noisy.to(self.dtype) + cond.parts["tokens"]
        for blk in self.blocks:
            x = blk(x)
        return x

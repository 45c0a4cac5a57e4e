"""A toy surrogate for unit tests of the loop (advertorch-style tiny in-repo model).

It is NOT an I2V model: a 2-layer conv "VAE encoder" and a stack of conv "blocks". Real families are tested with
tiny configs of the real diffusers classes in tests/test_surrogate_*.py.
"""

from __future__ import annotations

import torch
from torch import nn

from anti_i2v.surrogates.base import Conditioning, NoiseDraw, Surrogate


class ToySurrogate(Surrogate):
    family = "toy"
    default_size = (24, 32)

    def __init__(self, num_blocks: int = 6, *, fail_at_block: int | None = None, **kw) -> None:
        super().__init__(num_frames=kw.pop("num_frames", 1), **kw)
        g = torch.Generator().manual_seed(0)
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 4, 3, stride=2, padding=1))
        self.net = nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.SiLU()) for _ in range(num_blocks)])
        self.head = nn.Conv2d(8, 4, 1)
        for p in list(self.encoder.parameters()) + list(self.net.parameters()) + list(self.head.parameters()):
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        self.fail_at_block = fail_at_block
        self.calls = 0

    def denoiser(self):
        return self.net

    def denoiser_blocks(self):
        return [(f"block.{i}", m) for i, m in enumerate(self.net)]

    def vae_encoder_layers(self):
        return [("encoder.0", self.encoder[0]), ("encoder.2", self.encoder[2])]

    def modules(self):
        return [self.encoder, self.net, self.head]

    def sample_noise(self, batch, generator):
        h, w = self.default_size
        t = torch.randint(0, 1000, (batch,), generator=generator)
        noise = torch.randn(batch, 4, h // 2, w // 2, generator=generator)
        return NoiseDraw(timestep=t.to(self.device), noise=noise.to(self.device))

    def encode(self, image):
        self.calls += 1
        z = self.encoder(image * 2 - 1)
        return Conditioning(latent=z, parts={"concat": z})

    def clean_latent(self, cond):
        return cond.latent.float()

    def noisy_latent(self, x0, draw: NoiseDraw):
        a = (draw.timestep.float() / 1000).view(-1, 1, 1, 1)
        return (1 - a) * x0 + a * draw.noise

    def prediction_target(self, x0, draw: NoiseDraw):
        return draw.noise

    def denoise(self, cond, noisy, draw: NoiseDraw):
        x = torch.cat([noisy.to(cond.parts["concat"].dtype), cond.parts["concat"]], dim=1)
        for i, blk in enumerate(self.net):
            if self.fail_at_block is not None and i == self.fail_at_block:
                raise RuntimeError("toy failure")
            x = blk(x)
        return self.head(x)

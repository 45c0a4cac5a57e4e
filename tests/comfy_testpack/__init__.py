"""Test-only ComfyUI nodes for the Anti-I2V integration tests (never shipped to users).

* ``AntiI2VTest_ZeroConditioning``: a CONDITIONING of zeros of a given width and token count. It stands in for
  CLIPLoader + CLIPTextEncode in tests, because the umT5/T5 text encoders of the I2V models cannot be made tiny.
* ``AntiI2VTest_PoisonImage``: copies an IMAGE and writes NaN into one pixel (the UI cannot make such an
  image, but an upstream node can), to test that the Anti-I2V nodes refuse it with a clear message.
* ``AntiI2VTest_AddAlpha``: appends an alpha channel (an RGBA IMAGE is protected as RGB, with a warning).
"""

from __future__ import annotations

import torch
from comfy_api.latest import io


class ZeroConditioning(io.ComfyNode):
    """A zero text conditioning of shape (1, tokens, width)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AntiI2VTest_ZeroConditioning",
            display_name="Zero Conditioning (test)",
            category="Anti-I2V/testing",
            description="Test-only: a CONDITIONING of zeros, standing in for a text encoder that cannot be made tiny.",
            inputs=[
                io.Int.Input("width", default=4096, min=1, max=65536, tooltip="Embedding width (4096 for Wan/umT5)."),
                io.Int.Input("tokens", default=16, min=1, max=1024, tooltip="Number of text tokens."),
                io.Boolean.Input("attention_mask", default=False, optional=True,
                                 tooltip="Add an all-ones attention_mask (T5 encoders give one; LTX-Video needs it)."),
                io.Int.Input("pooled", default=0, min=0, max=65536, optional=True,
                             tooltip="Width of a zero pooled_output (768: CLIP-L's, which HunyuanVideo needs); "
                                     "0: None."),
            ],
            outputs=[io.Conditioning.Output(display_name="conditioning")],
        )

    @classmethod
    def execute(cls, width: int, tokens: int, attention_mask: bool = False, pooled: int = 0) -> io.NodeOutput:
        extra = {"pooled_output": torch.zeros(1, pooled) if pooled else None}
        if attention_mask:
            extra["attention_mask"] = torch.ones(1, tokens, dtype=torch.long)
        return io.NodeOutput([[torch.zeros(1, tokens, width), extra]])


class PoisonImage(io.ComfyNode):
    """A copy of an IMAGE with NaN in its top-left pixel."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AntiI2VTest_PoisonImage",
            display_name="Poison Image with NaN (test)",
            category="Anti-I2V/testing",
            description="Test-only: writes NaN into the top-left pixel of a copy of the image.",
            inputs=[io.Image.Input("image", tooltip="Image to copy.")],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, image: torch.Tensor) -> io.NodeOutput:
        out = image.clone()
        out[:, 0, 0, :] = float("nan")
        return io.NodeOutput(out)


class AddAlpha(io.ComfyNode):
    """An RGBA copy of an IMAGE (opaque alpha channel appended)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AntiI2VTest_AddAlpha",
            display_name="Add Alpha Channel (test)",
            category="Anti-I2V/testing",
            description="Test-only: appends an opaque alpha channel (RGBA IMAGE, as some loaders produce).",
            inputs=[io.Image.Input("image", tooltip="RGB image.")],
            outputs=[io.Image.Output(display_name="image")],
        )

    @classmethod
    def execute(cls, image: torch.Tensor) -> io.NodeOutput:
        return io.NodeOutput(torch.cat([image, torch.ones_like(image[..., :1])], dim=-1))


NODE_CLASS_MAPPINGS = {
    "AntiI2VTest_ZeroConditioning": ZeroConditioning,
    "AntiI2VTest_PoisonImage": PoisonImage,
    "AntiI2VTest_AddAlpha": AddAlpha,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "AntiI2VTest_ZeroConditioning": "Zero Conditioning (test)",
    "AntiI2VTest_PoisonImage": "Poison Image with NaN (test)",
    "AntiI2VTest_AddAlpha": "Add Alpha Channel (test)",
}

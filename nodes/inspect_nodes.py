"""AntiI2V_LayerPCA: PCA maps of denoiser block outputs, to pick the IRA / IRC layers of a model by eye.

A thin wrapper around :func:`anti_i2v.inspect_layers.block_pca_maps`: one no-grad forward of the surrogate on
the photo, the top-3 principal components of each chosen block's first-frame features shown as RGB.
"""

from __future__ import annotations

import torch

from anti_i2v.inspect_layers import block_pca_maps, resolve_blocks
from anti_i2v.surrogates.base import Surrogate

from . import runtime
from .comfy import CATEGORY, SurrogateType, io, ui

__all__ = ["LayerPCA"]

NODE_ID = "AntiI2V_LayerPCA"


class LayerPCA(io.ComfyNode):
    """Show the top-3 principal components of chosen denoiser blocks' outputs as RGB maps."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE_ID,
            display_name="Layer PCA Maps (Anti-I2V)",
            category=CATEGORY,
            description=(
                "Layer inspection for choosing IRA / IRC blocks (Anti-I2V Sec. 3.3): runs the surrogate once on "
                "the photo and shows, for each chosen denoiser block, the top-3 principal components of its "
                "first-frame features as an RGB map. Shallow blocks show the photo's structure, deep blocks "
                "coarse semantic regions."
            ),
            inputs=[
                SurrogateType.Input("surrogate", tooltip="The I2V surrogate from Load I2V Surrogate."),
                io.Image.Input("image", tooltip="The photo to inspect (the first image of a batch is used); it is "
                                                "resized to the surrogate's working size."),
                io.String.Input("blocks", default="0-3",
                                tooltip="Denoiser block indices, same syntax as the IRA node: '0-3', '3,27' or "
                                        "'0-41'. An index outside the model's range is an error naming the "
                                        "valid range."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the timestep and noise of the forward pass (the same seed gives "
                                     "the same maps)."),
            ],
            outputs=[
                io.Image.Output(display_name="maps",
                                tooltip="One RGB PCA map per block, in ascending block order, all at the "
                                        "surrogate's working size."),
                io.String.Output(display_name="block_names",
                                 tooltip="The blocks of the maps, in order: one 'index: name' per line."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, surrogate, image, blocks: str, seed: int) -> io.NodeOutput:
        if not isinstance(surrogate, Surrogate):
            raise runtime.not_a_surrogate(NODE_ID, surrogate)
        with runtime.node_errors(NODE_ID), runtime.grad_enabled():
            indices = resolve_blocks(surrogate, blocks)
            photo = runtime.to_library_image(image, node=NODE_ID, arg="image")[:1]
            with runtime.loaded_for_run(surrogate):
                maps = block_pca_maps(surrogate, photo, indices, seed=int(seed))
        names = surrogate.block_names
        batch = runtime.to_comfy_image(torch.stack([maps[i] for i in indices]))
        listing = "\n".join(f"{i}: {names[i]}" for i in indices)
        return io.NodeOutput(batch, listing, ui=ui.PreviewImage(batch, cls=cls))

"""Diffusion pipelines for the Triton tiers, built without downloading anything.

Each tier is a real ``diffusers`` text-to-image pipeline (text encoder → UNet with a
scheduler → VAE decode). With no checkpoint configured the pipeline is built from an
architecture *preset* with weights drawn from a seeded RNG, so every process on every
machine builds the same model and the images are structured noise. When a checkpoint
directory is named, the same code path loads it with ``from_pretrained`` (local files
only), which is how a GPU host serves a real SD-class model.

The module never imports Triton: it is tested and benchmarked as a plain library, and
``image_router.pipelines.triton_model`` adapts it to Triton's Python backend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from image_router.pipelines.contract import Cancelled

__all__ = ["PRESETS", "ImagePipeline", "Preset", "build_random_pipeline"]


@dataclass(frozen=True)
class Preset:
    """Architecture and defaults of one tier (sizes are pixels)."""

    width: int
    height: int
    steps: int
    scheduler: str
    unet_channels: tuple[int, ...]
    layers_per_block: int
    text_hidden: int
    text_layers: int
    vae_channels: tuple[int, ...]
    max_side: int
    max_steps: int


# The presets are sized so the tiers differ in cost the way real ones do (roughly
# 10x between draft and quality on a CPU) while staying cheap enough for CI.
PRESETS: dict[str, Preset] = {
    "draft": Preset(
        width=64,
        height=64,
        steps=4,
        scheduler="ddim",
        unet_channels=(32, 64),
        layers_per_block=1,
        text_hidden=32,
        text_layers=2,
        vae_channels=(32, 32, 64, 64),
        max_side=256,
        max_steps=16,
    ),
    "preview": Preset(
        width=128,
        height=128,
        steps=10,
        scheduler="ddim",
        unet_channels=(64, 96, 128),
        layers_per_block=2,
        text_hidden=64,
        text_layers=2,
        vae_channels=(32, 64, 64, 64),
        max_side=512,
        max_steps=32,
    ),
    "quality": Preset(
        width=256,
        height=256,
        steps=12,
        scheduler="euler",
        unet_channels=(64, 128, 128),
        layers_per_block=2,
        text_hidden=128,
        text_layers=4,
        vae_channels=(64, 64, 128, 128),
        max_side=768,
        max_steps=50,
    ),
}


def _scheduler(kind: str) -> Any:
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    if kind == "ddim":
        return DDIMScheduler(num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    if kind == "euler":
        return EulerDiscreteScheduler(num_train_timesteps=1000, steps_offset=1)
    raise ValueError(f"unknown scheduler {kind!r}")


def build_random_pipeline(preset: Preset, seed: int = 0) -> Any:
    """Build a ``StableDiffusionPipeline`` from ``preset`` with seeded random weights.

    The tokenizer is ByT5's byte-level tokenizer, which needs no vocabulary file, so
    the text encoder really reads the prompt without anything being downloaded.
    """
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import ByT5Tokenizer, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    n_up = len(preset.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n_up,
        up_block_types=("UpDecoderBlock2D",) * n_up,
        block_out_channels=preset.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(32, preset.vae_channels[0]),
        sample_size=preset.width,
    )
    n_unet = len(preset.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=preset.width // 2 ** (n_up - 1),
        in_channels=4,
        out_channels=4,
        block_out_channels=preset.unet_channels,
        layers_per_block=preset.layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * (n_unet - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n_unet - 1),
        cross_attention_dim=preset.text_hidden,
        attention_head_dim=8,
        norm_num_groups=min(32, preset.unet_channels[0]),
    )
    tokenizer = ByT5Tokenizer(model_max_length=77)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=preset.text_hidden,
            intermediate_size=preset.text_hidden * 4,
            num_hidden_layers=preset.text_layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=tokenizer.eos_token_id,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=_scheduler(preset.scheduler),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


def load_pipeline(path: Path, device: str = "cpu") -> Any:
    """Load a text-to-image pipeline saved with ``save_pretrained`` (no network)."""
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(str(path), local_files_only=True)
    return pipe.to(device)


class ImagePipeline:
    """One tier's pipeline with its defaults and limits; thread-compatible, not thread-safe.

    ``generate`` is deterministic: the same prompt, seed, steps and size give the same
    bytes, because each call draws its starting latents from its own seeded generator
    and runs alone (never batched with other requests, whose presence could change
    floating-point reduction order). ``generate_batch`` runs several rows in one call
    (a model's opt-in ``batch_rows``): deterministic per batch size, not equal to
    ``generate`` byte for byte.
    """

    def __init__(self, pipe: Any, preset: Preset, device: str = "cpu") -> None:
        self.pipe = pipe.to(device)
        self.pipe.set_progress_bar_config(disable=True)
        self.preset = preset
        self.device = device
        vae_scale = getattr(pipe, "vae_scale_factor", 8)
        self.size_multiple = int(vae_scale)
        self._variants: dict[str, Any] = {}

    def _variant(self, kind: str) -> Any:
        """The image-to-image or inpainting pipeline on this pipeline's own weights
        (diffusers' ``from_pipe``: no copy), made on first use."""
        pipe = self._variants.get(kind)
        if pipe is None:
            from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting

            auto = AutoPipelineForImage2Image if kind == "img2img" else AutoPipelineForInpainting
            pipe = self._variants[kind] = auto.from_pipe(self.pipe)
            pipe.set_progress_bar_config(disable=True)
        return pipe

    def generate(
        self,
        prompt: str,
        seed: int,
        steps: int,
        width: int,
        height: int,
        cancelled: Callable[[], bool] | None = None,
        init_image: NDArray[Any] | None = None,
        mask: NDArray[Any] | None = None,
        strength: float = 0.75,
    ) -> NDArray[Any]:
        """Return one image as ``uint8[height, width, 3]``: from noise, or from
        ``init_image`` (resized to ``width`` x ``height``) at ``strength``, repainting
        only where ``mask`` is set when one is given.

        ``cancelled`` is asked after every denoising step; when it says so the pipeline
        stops there (raising :class:`Cancelled`): abandoned work costs at most one step,
        not the rest of the image and its VAE decode."""
        import torch

        def check(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancelled is not None and cancelled():
                raise Cancelled(f"cancelled after step {step + 1} of {steps}")
            return tensors

        generator = torch.Generator(device="cpu").manual_seed(seed)
        common = {
            "prompt": prompt,
            "num_inference_steps": steps,
            "guidance_scale": 1.0,
            "generator": generator,
            "output_type": "np",
            "callback_on_step_end": check if cancelled is not None else None,
        }
        with torch.inference_mode():
            if init_image is None:
                out = self.pipe(width=width, height=height, **common)
            else:
                from PIL import Image

                start = Image.fromarray(init_image).convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
                if mask is None:
                    out = self._variant("img2img")(image=start, strength=strength, **common)
                else:
                    where = Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST)
                    out = self._variant("inpaint")(
                        image=start, mask_image=where, strength=strength, width=width, height=height, **common
                    )
                    # the pipeline repaints in latent space and decodes the whole picture, so
                    # the kept side drifts too: put the source's pixels back where the mask
                    # (255: repaint) says keep, as diffusers' own mask overlay does
                    repaint = np.asarray(where.convert("L"), dtype=np.float32)[..., None] / 255.0
                    source = np.asarray(start, dtype=np.float32) / 255.0
                    return _pixels(np.asarray(out.images[0]) * repaint + source * (1.0 - repaint))
        return _pixels(np.asarray(out.images[0]))

    def generate_batch(
        self,
        prompts: list[str],
        seeds: list[int],
        steps: int,
        width: int,
        height: int,
        cancelled: Callable[[], bool] | None = None,
    ) -> list[NDArray[Any]]:
        """Text-to-image rows that share steps and size, in one pipeline call.

        Each row draws its starting latents from its own generator seeded with its seed,
        so row ``i`` starts from the same noise as ``generate(prompts[i], seeds[i], ...)``.
        The bytes are *not* those of ``generate``: a batch of ``b`` runs other kernel
        shapes, and on the CPU reference a few values differ by one level (see
        docs/batching.md). What holds, measured: the same rows at the same ``b`` give the
        same bytes every time, whatever the other rows are; :mod:`image_router.pipelines.rows`
        therefore cuts a request into chunks that depend only on the request."""
        import torch

        if len(prompts) != len(seeds) or not prompts:
            raise ValueError("one seed per prompt, at least one prompt")

        def check(pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancelled is not None and cancelled():
                raise Cancelled(f"cancelled after step {step + 1} of {steps}")
            return tensors

        generators = [torch.Generator(device="cpu").manual_seed(seed) for seed in seeds]
        with torch.inference_mode():
            out = self.pipe(
                prompt=list(prompts),
                num_inference_steps=steps,
                guidance_scale=1.0,
                generator=generators,
                output_type="np",
                width=width,
                height=height,
                callback_on_step_end=check if cancelled is not None else None,
            )
        return [_pixels(np.asarray(image)) for image in out.images]


def _pixels(image: NDArray[Any]) -> NDArray[Any]:
    """``uint8[height, width, 3]`` from a picture of floats in [0, 1]."""
    return np.ascontiguousarray((image.clip(0.0, 1.0) * 255.0).round().astype(np.uint8))

"""image-router: an inference gateway for image generation in front of NVIDIA Triton."""

__version__ = "0.1.0"

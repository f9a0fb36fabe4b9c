"""Running a real Triton Inference Server for the project's ``model_repository/``."""

from image_router.triton.launcher import TritonConfig, TritonServer, TritonStartupError

__all__ = ["TritonConfig", "TritonServer", "TritonStartupError"]

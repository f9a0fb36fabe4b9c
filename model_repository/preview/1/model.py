"""Triton Python-backend entry of the `preview` model.

The implementation is shared by every tier: see image_router/pipelines/triton_model.py.
The tier is chosen by the `pipeline` parameter in ../config.pbtxt.
"""

from image_router.pipelines.triton_model import TritonPythonModel

__all__ = ["TritonPythonModel"]

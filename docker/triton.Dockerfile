# Triton for Kubernetes: the official NVIDIA image plus this project's models.
#   docker build -f docker/triton.Dockerfile -t image-router-triton:0.1.0 .
# The models' code (image_router/pipelines) needs Python >= 3.11 and diffusers: use a Triton
# release whose image ships Python 3.12 (Ubuntu 24.04 based, 25.01 and later).
# On GPU nodes, set `kind: KIND_GPU` in model_repository/*/config.pbtxt and point the
# `checkpoint` parameter at real weights (a volume), e.g. SDXL-Turbo for draft.
ARG TRITON_TAG=25.01-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}
COPY pyproject.toml README.md LICENSE routes.yaml /src/
COPY image_router /src/image_router
COPY schema /src/schema
COPY model_repository /src/model_repository
RUN pip install --no-cache-dir --break-system-packages '/src[models]'
COPY model_repository /models

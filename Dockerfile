# One image for every streamrec service; docker-compose.yml picks the command
# (`docker run streamrec:0.1.0 ingest` = `streamrec ingest`).
#
# Two stages: `build` installs streamrec and its pinned dependencies into a virtualenv; the
# runtime stage copies only that virtualenv onto a clean base (no pip, build files or sources).
# Nothing secret is baked in: configuration comes from STREAMREC_* variables at run time.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/streamrec/bin:$PATH
RUN python -m venv /opt/streamrec
# CPU-only torch first, from PyTorch's CPU wheel index: PyPI's wheel pulls gigabytes of CUDA
# libraries. Same version as pyproject.toml; the install below then finds it already satisfied.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "$TORCH_INDEX_URL" torch==2.13.0
# The dependencies (pyproject.toml's list; constraints.txt pins every version below them too) in a
# layer of their own, so that a code change does not reinstall them.
WORKDIR /src
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > requirements.txt \
 && pip install -r requirements.txt -c constraints.txt
COPY README.md ./
COPY streamrec streamrec
COPY shared shared
COPY services services
RUN pip install --no-deps .

FROM ${PYTHON_IMAGE}
# A fixed non-root uid. /data and /models are created owned by it: a named volume mounted on
# an image directory starts with that directory's owner, so the service can write to it.
RUN groupadd --system --gid 10001 streamrec \
 && useradd --system --uid 10001 --gid streamrec --create-home --home-dir /home/streamrec streamrec \
 && install -d -o streamrec -g streamrec /data /models
COPY --from=build /opt/streamrec /opt/streamrec
ENV PATH=/opt/streamrec/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    STREAMREC_DATA_DIR=/data
USER streamrec
WORKDIR /home/streamrec
# api: STREAMREC_API_PORT; ingest, scorer, trainer: /healthz /readyz /metrics on STREAMREC_METRICS_PORT.
EXPOSE 8000 9100
ENTRYPOINT ["streamrec"]
CMD ["--help"]

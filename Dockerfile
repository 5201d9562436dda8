# One image for the API and the workers (the command differs). Torch is pinned and installed
# first, so no other package can pull a different (multi-GB) build.
#
# torch==2.13.0 from the default index (PyPI) is a CUDA build: the Linux wheel ships its CUDA
# runtime, so GPU workers need only the NVIDIA driver on the host (docker-compose reserves the
# GPU). That is right for GPU workers (and harmless for the API, which never touches CUDA). For a
# CPU-only worker image (no CUDA libraries, far smaller) install torch from PyTorch's CPU index:
#   docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu -t celif:cpu .
# (its wheel is 2.13.0+cpu, which `torch==2.13.0` accepts); docker-compose builds `worker-cpu`
# that way.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# g++ and ninja build the fused C++ scan kernel on first use (cached under TORCH_EXTENSIONS_DIR).
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ curl \
    && rm -rf /var/lib/apt/lists/*

RUN pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==${TORCH_VERSION}"

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY celif_core ./celif_core
COPY jobstore ./jobstore
COPY service ./service
COPY worker ./worker
COPY celif_cli ./celif_cli
COPY migrations ./migrations
# Editable: the code (and migrations/, which jobstore.db.migrate finds beside the packages) stays
# in /app; a plain wheel install would not carry migrations/.
RUN pip install -e .

RUN useradd --create-home --uid 1000 celif \
    && mkdir -p /var/lib/celif /home/celif/.cache \
    && chown -R celif:celif /var/lib/celif /home/celif/.cache
USER celif
ENV CELIF_DATA_DIR=/var/lib/celif \
    TORCH_EXTENSIONS_DIR=/home/celif/.cache/torch_extensions

# Healthy while a worker of this container has refreshed its registry row within
# worker_offline_after_s (`celif worker --ping`: the database only, no broker round trip, well
# under a second). It holds for the workers and for the default command below, whose embedded
# worker announces itself the same way; the compose file's `api` service (uvicorn, no worker)
# overrides it with GET /readyz.
HEALTHCHECK --interval=30s --timeout=10s --start-period=90s --retries=3 \
    CMD ["celif", "worker", "--ping"]

EXPOSE 8000
CMD ["celif", "serve", "--host", "0.0.0.0", "--port", "8000"]

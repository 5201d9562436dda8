# One image for the API and the workers (the command differs). Torch is pinned and installed
# first, so no other package can pull a different (multi-GB) build; the PyPI wheel of torch for
# Linux ships its CUDA runtime, so GPU workers need only the NVIDIA driver on the host
# (docker-compose reserves the GPU).
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# g++ and ninja build the fused C++ scan kernel on first use (cached under TORCH_EXTENSIONS_DIR).
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ curl \
    && rm -rf /var/lib/apt/lists/*

RUN pip install "torch==${TORCH_VERSION}"

WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY celif_core ./celif_core
COPY service ./service
COPY worker ./worker
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

EXPOSE 8000
CMD ["celif", "serve", "--host", "0.0.0.0", "--port", "8000"]

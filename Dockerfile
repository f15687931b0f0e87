# clipfind: the Discord bot (python -m bot), CPU torch by default.
# Not built in the development environment (no Docker there); see docs/DISCORD.md.
#
#   docker build -t clipfind .
#   docker build -t clipfind:cuda --build-arg TORCH_VARIANT=cu124 .   # CUDA wheels (run with --gpus all)
#   docker run -e DISCORD_TOKEN=... -v $PWD/config.toml:/config/config.toml:ro \
#              -v $PWD/collection:/data/collection clipfind

ARG BASE=python:3.11-slim
FROM ${BASE}

# cpu, or a CUDA wheel tag of download.pytorch.org such as cu124
ARG TORCH_VARIANT=cpu
# The versions pyproject.toml allows (torch<=2.14.1) and the torchvision built for it: if the
# first install took the newest torch, `pip install .` would replace it with PyPI's CUDA build.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A font for the word-weights picture (Pillow's built-in one works too, but is plainer).
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# torch first, from the variant's index, so that `pip install .` does not pull the default
# (CUDA-bundling) wheel from PyPI.
RUN pip install --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"

COPY pyproject.toml README.md ./
COPY index ./index
COPY bot ./bot
COPY config.example.toml ./
RUN pip install . && rm -rf /root/.cache

RUN useradd --create-home --uid 10001 clipfind \
    && mkdir -p /data /config \
    && chown clipfind /data
USER clipfind
WORKDIR /data

VOLUME ["/data"]
ENTRYPOINT ["python", "-m", "bot"]
CMD ["--config", "/config/config.toml"]

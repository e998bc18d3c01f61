# syntax=docker/dockerfile:1
# runstream consumer and monitor image: `runstream consume ...`, `runstream monitor ...` (any runstream command).
#
#   docker build -t runstream:0.1.0 .
#   docker run --rm runstream:0.1.0 consume --kafka kafka:9092 --clickhouse http://clickhouse:8123/runstream --listen :9108
#
# The image is the server side, so it holds runstream with its [server] extra (consumer, migrate, query,
# monitor, analysis, chDB); training images need only `pip install runstream`, the SDK. Dependencies are
# pinned by deploy/requirements.lock (pip freeze of a fresh `pip install '.[server]'` on Python 3.11;
# regenerate it as its header says). Only manylinux wheels are used, so neither stage needs a compiler or
# apt. Runs as uid 10001, never root.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/runstream
COPY deploy/requirements.lock deploy/requirements.lock
RUN /opt/runstream/bin/pip install --only-binary=:all: -r deploy/requirements.lock
COPY pyproject.toml README.md ./
COPY runstream runstream
COPY producer producer
COPY consumer consumer
COPY schemas schemas
COPY dashboards dashboards
COPY analysis analysis
COPY monitoring monitoring
RUN /opt/runstream/bin/pip install --no-deps '.[server]' \
    && /opt/runstream/bin/runstream --version \
    && /opt/runstream/bin/python -c "from runstream.consumer import ConsumerService"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="runstream" \
      org.opencontainers.image.description="runstream consumer (Kafka -> ClickHouse) and monitor" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/runstream/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/home/runstream
RUN groupadd --system --gid 10001 runstream \
    && useradd --system --uid 10001 --gid runstream --home-dir /home/runstream --create-home --shell /usr/sbin/nologin runstream
COPY --from=build /opt/runstream /opt/runstream
USER 10001:10001
WORKDIR /home/runstream
# 9108: consumer /metrics, /healthz, /readyz; 9109: monitor /metrics
EXPOSE 9108 9109
ENTRYPOINT ["runstream"]
CMD ["consume", "--help"]

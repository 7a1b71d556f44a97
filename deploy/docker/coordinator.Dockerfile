# syntax=docker/dockerfile:1
# The coordinator: Flower SuperLink (started by deploy/scripts/coordinator-start.sh) and the
# `flwr` / `synthpool` command lines its administrators run with `docker compose exec`.
#
# Build from the repository root (the compose file does this):
#   docker build -f deploy/docker/coordinator.Dockerfile -t synthpool-coordinator .
#
# The SuperLink serves Flower's Fleet, Control and Runtime APIs on ONE port (9092 here). Control
# has no authentication in Flower 1.42, so this port must never be reachable by sites: put the
# fleet gateway (deploy/docker/fleet-gateway.conf.template) in front, as the compose file does.
#
# State (volume): /var/lib/synthpool-coordinator
#   superlink.db      Flower's link state (runs, nodes, messages)
#   checkpoints/      pooled weights per round + events.jsonl (pass checkpoint-dir to `flwr run`)
#   cli-home/         FLWR_HOME of the admin CLI (config.toml names the connection "synthpool")
#   superlink-home/   FLWR_HOME of the SuperLink

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN python -m venv /opt/synthpool/venv \
 && /opt/synthpool/venv/bin/pip install --index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"
COPY pyproject.toml README.md /src/
COPY synthpool /src/synthpool
COPY common /src/common
COPY agent /src/agent
COPY coordinator /src/coordinator
COPY protos /src/protos
RUN /opt/synthpool/venv/bin/pip install /src \
 && /opt/synthpool/venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="synthpool-coordinator" \
      org.opencontainers.image.description="synthpool coordinator (Flower SuperLink + admin CLI)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/synthpool/venv /opt/synthpool/venv
# The config-only Flower app submitted with `flwr run /opt/synthpool/app synthpool`.
COPY deploy/app /opt/synthpool/app
COPY --chmod=0755 deploy/scripts/coordinator-start.sh /opt/synthpool/bin/synthpool-coordinator-start
RUN groupadd --system --gid 10002 synthpool \
 && useradd --system --uid 10002 --gid synthpool --home-dir /var/lib/synthpool-coordinator \
            --no-create-home --shell /usr/sbin/nologin synthpool \
 && install -d -o synthpool -g synthpool -m 0700 /var/lib/synthpool-coordinator
ENV PATH=/opt/synthpool/venv/bin:/opt/synthpool/bin:$PATH \
    HOME=/var/lib/synthpool-coordinator \
    PYTHONUNBUFFERED=1 \
    SYNTHPOOL_STATE_DIR=/var/lib/synthpool-coordinator \
    SYNTHPOOL_VENV_BIN=/opt/synthpool/venv/bin \
    SYNTHPOOL_PORT=9092 \
    FLWR_HOME=/var/lib/synthpool-coordinator/cli-home \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1
USER synthpool
WORKDIR /var/lib/synthpool-coordinator
VOLUME ["/var/lib/synthpool-coordinator"]
# Reached by the fleet gateway only (see the compose file's networks); never publish it.
EXPOSE 9092
# SuperLink's own /health route. With TLS on the SuperLink (SYNTHPOOL_TLS_*), this plain-HTTP
# probe fails: override the healthcheck in that deployment.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SYNTHPOOL_PORT', '9092'), timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/opt/synthpool/bin/synthpool-coordinator-start"]

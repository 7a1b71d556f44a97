# syntax=docker/dockerfile:1
# The site agent: `synthpool-agent run --config /etc/synthpool/site.toml`.
#
# Build from the repository root (the compose file does this):
#   docker build -f deploy/docker/agent.Dockerfile -t synthpool-agent .
#
# It opens NO inbound port: the agent's SuperNode dials out to the coordinator's fleet gateway;
# its own Runtime API listens on 127.0.0.1 inside the container only (used by the healthcheck and
# by the ClientApp processes the SuperNode starts). There is no EXPOSE here on purpose.
#
# Mounts expected at run time:
#   /etc/synthpool/site.toml     the site's own config (read-only; it holds the privacy caps)
#   /data                        the site's rows (read-only)
#   /var/lib/synthpool-agent     state: privacy ledger (SQLite), releases, plans, Flower home

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# torch first and pinned, from the CPU wheel index (no multi-GB CUDA wheels). For a GPU site pass
# e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 (and a CUDA base image).
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
# A regular (non-editable) install: the image holds no source tree, only the installed package.
RUN /opt/synthpool/venv/bin/pip install /src \
 && /opt/synthpool/venv/bin/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="synthpool-agent" \
      org.opencontainers.image.description="synthpool site agent (Flower SuperNode, outbound only)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/synthpool/venv /opt/synthpool/venv
RUN groupadd --system --gid 10001 synthpool \
 && useradd --system --uid 10001 --gid synthpool --home-dir /var/lib/synthpool-agent \
            --no-create-home --shell /usr/sbin/nologin synthpool \
 && install -d -o synthpool -g synthpool -m 0700 /var/lib/synthpool-agent \
 && install -d -m 0755 /etc/synthpool /data
ENV PATH=/opt/synthpool/venv/bin:$PATH \
    HOME=/var/lib/synthpool-agent \
    PYTHONUNBUFFERED=1 \
    FLWR_TELEMETRY_ENABLED=0 \
    FLWR_DISABLE_UPDATE_CHECK=1
USER synthpool
WORKDIR /var/lib/synthpool-agent
VOLUME ["/var/lib/synthpool-agent"]
# Alive = the agent's SuperNode answers on its loopback Runtime API (port 9094 unless site.toml's
# [supernode] port says otherwise). It does NOT prove the coordinator is reachable: a SuperNode
# keeps retrying the coordinator while staying healthy; read the logs for that.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9094/health', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["synthpool-agent"]
CMD ["run", "--config", "/etc/synthpool/site.toml"]

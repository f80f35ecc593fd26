# syntax=docker/dockerfile:1
# One image for the operator, the REST facade and the agent sidecar; each is a console
# script of the agent-registry package and the Helm chart picks one with `command:`.
#
#   docker build -t agent-registry:dev .
#   docker run --rm agent-registry:dev agent-registry-operator --help
#   docker run --rm agent-registry:dev agent-registry-facade --help
#   docker run --rm agent-registry:dev agent-sidecar --help
#
# Two stages: the build stage installs the package and its dependencies into a virtualenv
# with pip; the runtime stage copies only that virtualenv onto a clean slim base, so no
# compiler, pip cache or source tree ships.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/agent-registry
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so editing the code reuses this layer.
COPY pyproject.toml README.md ./
RUN mkdir -p operator/agent_registry agent_sidecar \
 && touch operator/agent_registry/__init__.py agent_sidecar/__init__.py \
 && /opt/agent-registry/bin/pip install . \
 && /opt/agent-registry/bin/pip uninstall -y agent-registry
COPY operator/ operator/
COPY agent_sidecar/ agent_sidecar/
# A regular (not editable) install: the runtime stage has no /src. Bytecode is compiled
# here because the runtime root filesystem is read-only.
RUN /opt/agent-registry/bin/pip install --no-deps . \
 && /opt/agent-registry/bin/pip uninstall -y pip setuptools wheel \
 && /opt/agent-registry/bin/python -m compileall -q /opt/agent-registry/lib

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="agent-registry" \
      org.opencontainers.image.description="Agent Registry for Kubernetes: operator, REST facade and sidecar" \
      org.opencontainers.image.source="https://github.com/optiinfra/agent-registry" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric non-root user, so Kubernetes can verify runAsNonRoot without a passwd lookup.
RUN groupadd --system --gid 65532 registry \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin registry
COPY --from=build /opt/agent-registry /opt/agent-registry
ENV PATH=/opt/agent-registry/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
WORKDIR /tmp
# 8080: facade HTTP and operator /healthz; 9090: operator metrics.
EXPOSE 8080 9090
# Without a command the image runs the operator; the chart names the command explicitly.
CMD ["agent-registry-operator"]

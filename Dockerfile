# One image for the operator, the REST facade and the agent sidecar; each is a console
# script of the agent-registry package and the Helm chart picks one with `command:`.
# A second, much smaller target holds the sidecar alone, for agent pods.
#
#   DOCKER_BUILDKIT=1 docker build -t agent-registry:dev .
#   DOCKER_BUILDKIT=1 docker build --target sidecar -t agent-sidecar:dev .
#   docker run --rm agent-registry:dev agent-registry-operator --help
#   docker run --rm agent-registry:dev agent-registry-facade --help
#   docker run --rm agent-registry:dev agent-sidecar --help
#   docker run --rm agent-sidecar:dev --help
#
# Build stages install the package and its dependencies into a virtualenv with pip; the
# runtime stages copy only that virtualenv onto a clean base, so no compiler, pip cache or
# source tree ships.
#
# BuildKit is needed (`RUN --mount`), and no `# syntax=` line is used on purpose: that
# would fetch the Dockerfile frontend from a registry, and the build machines reach none.
#
# PYTHON_IMAGE: any Debian-based image with python3 and its venv module on PATH as `python`
# (the tests build one with debootstrap: agent_registry/localcluster/images.py).
#
# Where pip reaches PyPI only through TLS that a private CA signs, hand that CA bundle to
# the build stages as a secret; it is never written into a layer:
#   docker build --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt ...

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/agent-registry
WORKDIR /src
# Dependencies first, from pyproject.toml alone, so editing the code (or the README, an
# empty stand-in here) reuses this layer.
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && mkdir -p operator/agent_registry agent_sidecar \
 && touch README.md operator/agent_registry/__init__.py agent_sidecar/__init__.py \
 && /opt/agent-registry/bin/pip install . \
 && /opt/agent-registry/bin/pip uninstall -y agent-registry
COPY README.md ./
COPY operator/ operator/
COPY agent_sidecar/ agent_sidecar/
# A regular (not editable) install: the runtime stage has no /src. pip fetches the build
# backend (setuptools) again, hence the CA bundle. Bytecode is compiled here because the
# runtime root filesystem is read-only.
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && /opt/agent-registry/bin/pip install --no-deps . \
 && /opt/agent-registry/bin/pip uninstall -y pip setuptools wheel \
 && /opt/agent-registry/bin/python -m compileall -q /opt/agent-registry/lib

# The sidecar runs `agent_sidecar` and the parts of `agent_registry` it imports (kubeapi,
# schema) and needs only these of the package's dependencies; they keep the versions
# pyproject.toml gives them. httpx is the client library's (AgentRegistration), not the
# sidecar's; kopf, kubernetes, FastAPI, uvicorn and Redis are the operator's and facade's.
FROM ${PYTHON_IMAGE} AS sidecar-build
ARG SIDECAR_REQUIREMENTS="pydantic pydantic-settings PyYAML"
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/agent-sidecar
WORKDIR /src
COPY pyproject.toml ./
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && python -c 'import re, sys, tomllib; \
wanted = {n.lower() for n in sys.argv[1:]}; \
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; \
found = [d for d in deps if re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower() in wanted]; \
assert len(found) == len(wanted), f"not in pyproject.toml: {wanted} vs {found}"; \
print("\n".join(found))' $SIDECAR_REQUIREMENTS > /tmp/sidecar-requirements.txt \
 && /opt/agent-sidecar/bin/pip install -r /tmp/sidecar-requirements.txt
COPY README.md ./
COPY operator/ operator/
COPY agent_sidecar/ agent_sidecar/
# Only the sidecar's console script stays: the others would fail on imports not installed.
RUN --mount=type=secret,id=pip-ca \
    if [ -f /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && /opt/agent-sidecar/bin/pip install --no-deps . \
 && /opt/agent-sidecar/bin/pip uninstall -y pip setuptools wheel \
 && find /opt/agent-sidecar/bin -name 'agent-registry-*' -delete \
 && /opt/agent-sidecar/bin/python -m compileall -q /opt/agent-sidecar/lib

FROM ${PYTHON_IMAGE} AS sidecar
LABEL org.opencontainers.image.title="agent-sidecar" \
      org.opencontainers.image.description="Agent Registry for Kubernetes: the agent sidecar alone" \
      org.opencontainers.image.source="https://github.com/optiinfra/agent-registry" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 65532 registry \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin registry
COPY --from=sidecar-build /opt/agent-sidecar /opt/agent-sidecar
ENV PATH=/opt/agent-sidecar/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 65532:65532
WORKDIR /tmp
# The chart names the command (`command: [agent-sidecar]`), as it does for the full image.
CMD ["agent-sidecar"]

# The full image comes last: it is what `docker build .` without --target gives.
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

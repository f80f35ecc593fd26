#!/usr/bin/env bash
# Install what the image and kind tests need to run their own Docker daemon (Debian's
# docker.io: dockerd, containerd, runc and a docker CLI) and to make base images without
# a registry (debootstrap), only when they are missing. Nothing is started or configured
# here: the test suite starts dockerd itself with its own socket and configuration under
# the cache (operator/agent_registry/localcluster/docker.py).
set -euo pipefail

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo ">> installing Debian packages: ${need[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
# No recommends (apparmor, needrestart, git, ...): the tests need none of them.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null

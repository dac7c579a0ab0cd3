#!/usr/bin/env bash
# Build (or find in ~/.cache/kubelearn/images) the runner, operator and tensorboard images
# from the Dockerfile with buildah, daemonless; prints RUNNER=, OPERATOR= and TENSORBOARD=
# <tarball>.
# `build-images.sh apt` installs the host tools first (what CI runs, as root).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec python3 -m tests.node.images "$@"

# syntax=docker/dockerfile:1.7
# Three images from one build:
#   docker build --target runner      -t kubelearn/runner:0.1.0      .  (what experiment pods run)
#   docker build --target operator    -t kubelearn/operator:0.1.0    .  (the operator, for the chart)
#   docker build --target tensorboard -t kubelearn/tensorboard:0.1.0 .  (spec.tensorboard)
# The runner's entrypoint is `kubelearn`, so `docker run kubelearn/runner:0.1.0 run ...` is
# `kubelearn run ...`; output is unbuffered, so `kubectl logs` shows it as it happens.
# The runner has tensorboardX (the [tensorboard] extra), so the chief writes TensorBoard event
# files into the model directory, where the tensorboard image serves them from.

ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm
ARG TENSORBOARD_VERSION=2.20.0

# ---- builder: every wheel both images install, and tini ------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ARG TENSORBOARD_VERSION
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# tini forwards SIGTERM to the Python process, which as PID 1 would ignore it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini=0.19.0-* \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY runner/ runner/
COPY common/ common/
COPY operator/ operator/
# runner: the kubelearn wheel (numpy, pyyaml, fsspec) with its [distributed] (pyzmq),
# [tensorboard] (tensorboardX) and [s3] (s3fs: a model directory s3://bucket/prefix) extras.
# operator: the kubelearn wheel alone plus its [operator] extra (kopf, kubernetes_asyncio,
# prometheus-client) and its [sweep] extra (optuna, for Sweeps' search, which brings numpy),
# read from pyproject.toml so the two never drift.
RUN pip wheel --wheel-dir /wheels/runner ".[distributed,tensorboard,s3]" \
 && pip wheel --no-deps --wheel-dir /wheels/operator . \
 && python -c "import tomllib; extras = tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']; print('\n'.join(extras['operator'] + extras['sweep']))" > /tmp/operator.txt \
 && pip wheel --wheel-dir /wheels/operator --requirement /tmp/operator.txt \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['s3']))" > /tmp/s3.txt \
 && pip wheel --wheel-dir /wheels/tensorboard "tensorboard==${TENSORBOARD_VERSION}" \
    --requirement /tmp/s3.txt

# ---- base: what both final images share -----------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ARG KUBELEARN_VERSION=0.1.0
ARG VCS_REF=unknown
LABEL org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${KUBELEARN_VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}" \
      org.opencontainers.image.vendor="kubelearn"
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
# A fixed uid, so the chart's securityContext and volume permissions can name it.
RUN groupadd --system --gid 65532 kubelearn \
 && useradd --system --uid 65532 --gid 65532 --home-dir /workspace --create-home \
      --shell /usr/sbin/nologin kubelearn
COPY --from=builder /usr/bin/tini-static /usr/bin/tini
WORKDIR /workspace

# ---- runner: what each replica of an experiment runs ----------------------------------------
FROM base AS runner
LABEL org.opencontainers.image.title="kubelearn-runner" \
      org.opencontainers.image.description="Runs one replica of a kubelearn Experiment: kubelearn run"
# The wheels are bind-mounted from the builder, so none of them stays in a layer.
RUN --mount=type=bind,from=builder,source=/wheels/runner,target=/wheels \
    pip install --no-index /wheels/*.whl \
 && pip check
USER 65532:65532
ENTRYPOINT ["/usr/bin/tini", "--", "kubelearn"]
CMD ["--help"]

# ---- operator: reconciles Experiments (installed with the Helm chart) -----------------------
FROM base AS operator
LABEL org.opencontainers.image.title="kubelearn-operator" \
      org.opencontainers.image.description="The kubelearn operator: runs Experiments as pods"
# --no-deps: exactly the builder's wheels, not the runner's (pyzmq, fsspec), which the
# kubelearn wheel asks for but the operator never imports; the import below proves nothing
# it does import is missing.
RUN --mount=type=bind,from=builder,source=/wheels/operator,target=/wheels \
    pip install --no-index --no-deps /wheels/*.whl \
 && python -c "import kubelearn_operator.handlers"
USER 65532:65532
# Liveness and readiness on :8080/healthz, Prometheus metrics on :9090/metrics.
EXPOSE 8080 9090
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m", "kubelearn_operator"]
CMD ["--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]

# ---- tensorboard: serves an experiment's model directory (spec.tensorboard) -----------------
# With the [s3] extra's s3fs, which TensorBoard reads an s3:// log directory through (fsspec).
FROM base AS tensorboard
LABEL org.opencontainers.image.title="kubelearn-tensorboard" \
      org.opencontainers.image.description="TensorBoard over a kubelearn experiment's model directory"
RUN --mount=type=bind,from=builder,source=/wheels/tensorboard,target=/wheels \
    pip install --no-index /wheels/*.whl \
 && pip check
USER 65532:65532
EXPOSE 6006
# The operator passes --logdir <model dir> --bind_all --port 6006.
ENTRYPOINT ["/usr/bin/tini", "--", "tensorboard"]
CMD ["--help"]

#!/usr/bin/env bash
# The quick start on a machine with Docker, kind, kubectl and helm: a kind cluster, both
# images built and loaded into it, the operator installed with the chart, the example
# Experiment run to success, its final metrics printed, and everything removed again.
#
#   hack/kind-e2e.sh              every step, in order
#   hack/kind-e2e.sh STEP...      only these steps (see --help)
#
# Settings (environment): KIND_CLUSTER (kubelearn), RELEASE_NAMESPACE (kubelearn-system),
# EXAMPLE_NAMESPACE (default), TIMEOUT for the experiment (600s), KEEP_CLUSTER=1 to keep
# the cluster at the end, HELM_EXTRA_ARGS added to `helm upgrade --install` (word-split).
set -euo pipefail
cd "$(dirname "$0")/.."

KIND_CLUSTER="${KIND_CLUSTER:-kubelearn}"
RELEASE="${RELEASE:-kubelearn}"
RELEASE_NAMESPACE="${RELEASE_NAMESPACE:-kubelearn-system}"
EXAMPLE_NAMESPACE="${EXAMPLE_NAMESPACE:-default}"
EXAMPLE="${EXAMPLE:-examples/experiment.yaml}"
TIMEOUT="${TIMEOUT:-600s}"
KEEP_CLUSTER="${KEEP_CLUSTER:-0}"
HELM_EXTRA_ARGS="${HELM_EXTRA_ARGS:-}"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)"
RUNNER_IMAGE="kubelearn/runner:${VERSION}"
OPERATOR_IMAGE="kubelearn/operator:${VERSION}"
TENSORBOARD_IMAGE="kubelearn/tensorboard:${VERSION}"
STEPS=(create-cluster build-images load-images install wait-operator run-example
       wait-succeeded show-metrics uninstall delete-cluster)

say() { printf '==> %s\n' "$*" >&2; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "kind-e2e: needs '$tool' on PATH" >&2; exit 2; }
  done
}

example_name() {
  sed -n 's/^  name: *//p' "$EXAMPLE" | head -n 1
}

create-cluster() {
  need kind docker
  say "creating kind cluster ${KIND_CLUSTER}"
  kind create cluster --name "$KIND_CLUSTER" --wait 120s
}

build-images() {
  need docker
  say "building ${RUNNER_IMAGE}, ${OPERATOR_IMAGE} and ${TENSORBOARD_IMAGE}"
  local target ref
  ref="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  for target in runner operator tensorboard; do
    docker build --target "$target" --tag "kubelearn/${target}:${VERSION}" \
      --build-arg "VCS_REF=${ref}" .
  done
}

load-images() {
  need kind
  say "loading the images into ${KIND_CLUSTER}"
  kind load docker-image --name "$KIND_CLUSTER" "$RUNNER_IMAGE" "$OPERATOR_IMAGE" \
    "$TENSORBOARD_IMAGE"
}

install() {
  need helm
  say "installing the operator (release ${RELEASE} in ${RELEASE_NAMESPACE})"
  local extra=()
  read -r -a extra <<<"${HELM_EXTRA_ARGS}"
  helm upgrade --install "$RELEASE" charts/kubelearn \
    --namespace "$RELEASE_NAMESPACE" --create-namespace \
    --set "image.tag=${VERSION}" --set "runnerImage.tag=${VERSION}" "${extra[@]}"
}

wait-operator() {
  need kubectl
  say "waiting for the operator to be ready"
  kubectl wait deployment --for=condition=Available --timeout 180s \
    --namespace "$RELEASE_NAMESPACE" --selector "app.kubernetes.io/instance=${RELEASE}"
}

run-example() {
  need kubectl
  say "running ${EXAMPLE}"
  kubectl apply --namespace "$EXAMPLE_NAMESPACE" -f "$EXAMPLE"
}

wait-succeeded() {
  need kubectl
  local name
  name="$(example_name)"
  say "waiting up to ${TIMEOUT} for experiment ${name} to succeed"
  if ! kubectl wait "experiment/${name}" --namespace "$EXAMPLE_NAMESPACE" \
      --for=jsonpath='{.status.phase}'=Succeeded --timeout "$TIMEOUT"; then
    kubectl get experiment "$name" --namespace "$EXAMPLE_NAMESPACE" -o yaml >&2 || true
    kubectl get pods --namespace "$EXAMPLE_NAMESPACE" \
      --selector "kubelearn.dev/experiment=${name}" >&2 || true
    return 1
  fi
}

show-metrics() {
  need kubectl
  local name
  name="$(example_name)"
  kubectl get experiments --namespace "$EXAMPLE_NAMESPACE"
  printf 'final metrics: '
  kubectl get experiment "$name" --namespace "$EXAMPLE_NAMESPACE" \
    -o jsonpath='{.status.metrics}'
  printf '\n'
}

uninstall() {
  need kubectl helm
  say "removing the example and the operator"
  kubectl delete --namespace "$EXAMPLE_NAMESPACE" -f "$EXAMPLE" --ignore-not-found --wait
  helm uninstall "$RELEASE" --namespace "$RELEASE_NAMESPACE"
}

delete-cluster() {
  if [[ "$KEEP_CLUSTER" == 1 ]]; then
    say "keeping kind cluster ${KIND_CLUSTER} (KEEP_CLUSTER=1)"
    return 0
  fi
  need kind
  say "deleting kind cluster ${KIND_CLUSTER}"
  kind delete cluster --name "$KIND_CLUSTER"
}

usage() {
  echo "usage: $0 [STEP...]"
  echo "steps, in the order run without arguments: ${STEPS[*]}"
}

main() {
  if [[ $# -eq 0 ]]; then
    # Every step; the cluster goes at the end, also when a step fails.
    create-cluster
    trap delete-cluster EXIT
    set -- "${STEPS[@]:1:${#STEPS[@]}-2}"
  fi
  local step known s
  for step in "$@"; do
    if [[ "$step" == -h || "$step" == --help ]]; then
      usage
      return 0
    fi
    known=0
    for s in "${STEPS[@]}"; do [[ "$s" == "$step" ]] && known=1; done
    if [[ "$known" != 1 ]]; then
      echo "kind-e2e: unknown step '$step'" >&2
      usage >&2
      return 2
    fi
  done
  for step in "$@"; do
    "$step"
  done
}

main "$@"

#!/usr/bin/env bash
# Writes the Experiment CRD from the model (runner/kubelearn_spec) into crds/ and the chart.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PYTHONPATH="$root/runner${PYTHONPATH:+:$PYTHONPATH}" python -m kubelearn_spec.crd \
  > "$root/crds/experiments.kubelearn.dev.yaml"
cp "$root/crds/experiments.kubelearn.dev.yaml" "$root/charts/kubelearn/crds/experiments.kubelearn.dev.yaml"

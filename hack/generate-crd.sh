#!/usr/bin/env bash
# Writes the Experiment and Sweep CRDs from the model (common/kubelearn_spec) into crds/ and
# the chart.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
for plural in experiments sweeps; do
  PYTHONPATH="$root/common${PYTHONPATH:+:$PYTHONPATH}" python -m kubelearn_spec.crd "$plural" \
    > "$root/crds/$plural.kubelearn.dev.yaml"
  cp "$root/crds/$plural.kubelearn.dev.yaml" "$root/charts/kubelearn/crds/"
done

#!/usr/bin/env bash
# Rebuilds the shipped checkpoints (each recipe holds out fold 0's speakers as its test set).
#   bash training/ship.sh [default localatt multitask]
# Full cross-validation of a recipe (slower: one training per fold):
#   python -m training.evaluate --folds 4 --config training/configs/default.yaml --attach checkpoints/default
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(default localatt multitask)
for n in "${names[@]}"; do
  echo "== $n"
  /usr/bin/time -v $PY -m training.fit --config "training/configs/$n.yaml" 2> >(grep -vE 'it/s|s/it' >&2)
  rm -rf "checkpoints/$n/last"
done

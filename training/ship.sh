#!/usr/bin/env bash
# Rebuilds the shipped checkpoints; every recipe holds out k-fold fold 0's speakers as its test set.
#   bash training/ship.sh [default localatt multitask cnnlstm]
# `default` is an ensemble: three members of training/configs/default.yaml that differ only in
# --model-seed (none, 1, 2), merged by python -m training.ensemble (about 12 min on a 2-core CPU).
# Full cross-validation of a recipe (slower: one training per fold, both protocols):
#   python -m training.evaluate --folds 4 --config training/configs/default.yaml --attach checkpoints/default
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
WORK=${SERDEMO_SHIP_WORK:-.cache/ship}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(default localatt multitask cnnlstm)
for n in "${names[@]}"; do
  echo "== $n"
  if [ "$n" = default ]; then
    members=()
    for seed in none 1 2; do
      $PY -m training.fit --config training/configs/default.yaml --model-seed "$seed" --out "$WORK/default-s$seed"
      members+=("$WORK/default-s$seed")
    done
    $PY -m training.ensemble --out checkpoints/default --name default "${members[@]}"
  else
    $PY -m training.fit --config "training/configs/$n.yaml"
    rm -rf "checkpoints/$n/last"
  fi
done

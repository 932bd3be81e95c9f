#!/usr/bin/env bash
# Rebuilds the shipped checkpoints; every recipe holds out k-fold fold 0's speakers as its test set.
#   bash training/ship.sh [default localatt multitask cnnlstm]
# First fills the encoder-state cache (once; ~7 min on a 2-core CPU for the three corpora), then trains each
# recipe in training/configs/ and, for the default, cross-validates it in both protocols (k-fold and
# leave-one-corpus-out, with the encoder-probe and classic reference rows) and attaches the result to its card.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${SERDEMO_SHARED_DATA:-../shared/data}
WORK=${SERDEMO_SHIP_WORK:-.cache/ship}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(default localatt multitask cnnlstm)
$PY -m training.encoded --corpus "emodb=$DATA/emodb" --corpus "ravdess=$DATA/ravdess" --corpus "nemo=$DATA/nemo"
for n in "${names[@]}"; do
  echo "== $n"
  $PY -m training.fit --config "training/configs/$n.yaml"
  rm -rf "checkpoints/$n/last" "checkpoints/$n/progress.jsonl"  # the run's own state, not the checkpoint
  if [ "$n" = default ]; then
    $PY -m training.evaluate --folds 4 --config training/configs/default.yaml --workdir "$WORK/cv-default" \
      --attach checkpoints/default --json "$WORK/cv-default.json"
  fi
done

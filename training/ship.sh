#!/usr/bin/env bash
# Rebuilds the shipped checkpoints; every recipe holds out k-fold fold 0's speakers as its test set.
#   bash training/ship.sh [default localatt multitask cnnlstm]
# First fills the encoder-state cache (once; ~8 min on a 2-core CPU for the four corpora), then trains each
# recipe in training/configs/ and, for the default, runs the nested voice screen in both protocols (k-fold and
# leave-one-corpus-out) and attaches its figures to the card.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
DATA=${SERDEMO_SHARED_DATA:-../shared/data}
WORK=${SERDEMO_SHIP_WORK:-.cache/ship}
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(default localatt multitask cnnlstm)
$PY -m training.encode --corpus "emodb=$DATA/emodb" --corpus "ravdess=$DATA/ravdess" --corpus "nemo=$DATA/nemo" \
  --corpus "emovo=$DATA/emovo"
for n in "${names[@]}"; do
  echo "== $n"
  $PY -m training.fit --config "training/configs/$n.yaml"
  rm -rf "checkpoints/$n/last" "checkpoints/$n/progress.jsonl"  # the run's own state, not the checkpoint
  if [ "$n" = default ]; then
    # the nested screen (voice variant and calibration chosen inside each outer fold), then its figures into
    # the card: metrics.loco (leave-one-corpus-out over four corpora) and metrics.cv (4 speaker folds)
    mkdir -p "$WORK"
    rm -f "$WORK/voice-loco.jsonl" "$WORK/voice-kfold.jsonl"
    $PY -m training.voice --scheme loco --json "$WORK/voice-loco.jsonl"
    $PY -m training.voice --scheme kfold --json "$WORK/voice-kfold.jsonl"
    $PY -m training.voice --attach checkpoints/default --loco-json "$WORK/voice-loco.jsonl" \
      --kfold-json "$WORK/voice-kfold.jsonl"
  fi
done

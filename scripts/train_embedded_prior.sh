#!/usr/bin/env bash
# Train the embedded prior and its probe, stage after stage, resuming whatever a previous run of
# this script left in runs/prior-train/ (rerunning it after an interruption continues; rerunning it
# after it finished only re-evaluates and re-exports). Budgets are each stage's wall-clock minutes
# of training, summed over resumed runs: VAE 40 + UNet 42 = 82, probe 17.
#
#   nohup bash scripts/train_embedded_prior.sh > runs/prior-train/nohup.out 2>&1 &
#
# Log: runs/prior-train/train.log (copied to the weights folder as training_log.txt at the end).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
WORK=${WORK:-runs/prior-train}
OUT=${OUT:-scorestudio/priors/weights/embedded}
LOG="$WORK/train.log"
# Shared cores: without passive waiting, 2 OpenMP threads ran 10-30x slower under other load.
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$WORK" "$OUT"

stage() {
    echo "== $(date -Is) train $*" | tee -a "$LOG"
    PYTHONPATH=. "$PYTHON" -m scorestudio train-prior --out "$OUT" --work-dir "$WORK" --resume "$@" 2>&1 | tee -a "$LOG"
}

stage --stage probe --minutes 17
stage --stage vae --minutes 40
stage --stage unet --minutes 42 --batch-size 32 --lr 5e-4
echo "== $(date -Is) done" | tee -a "$LOG"
cp "$LOG" "$OUT/training_log.txt"

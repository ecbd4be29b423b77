#!/usr/bin/env bash
# Train b̂ψ, LMC-SDS's learned manifold corrective, for the embedded prior (~22 min of training +
# ~3 min of latent caching and evaluation on 2 CPU cores), resuming whatever a previous run of this
# script left in runs/manifold-corrective/ (rerunning it after it finished only re-evaluates and
# re-exports). Images and VAE latents come from the prior trainer's caches in runs/prior-train/
# (rendered by scripts/train_embedded_prior.sh; the latents are encoded once if missing).
#
#   nohup bash scripts/train_manifold_corrective.sh > runs/manifold-corrective/nohup.out 2>&1 &
#
# Extra arguments go to the trainer (later ones win), e.g. a 1-minute check into scratch folders:
#   WORK=/tmp/bhat-work OUT=/tmp/bhat bash scripts/train_manifold_corrective.sh --minutes 1 \
#       --cache-images 2048 --prior-work-dir /tmp/bhat-prior-work --cache-dir runs/prior-train/cache
#
# Log: runs/manifold-corrective/train.log (copied next to the weights as training_log.txt); the
# held-out L_k vs the identity baseline is at its end and in OUT/metrics.json.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
WORK=${WORK:-runs/manifold-corrective}
OUT=${OUT:-scorestudio/priors/weights/embedded/manifold_corrective}
PRIOR_WORK=${PRIOR_WORK:-runs/prior-train}
LOG="$WORK/train.log"
# Shared cores: without passive waiting, 2 OpenMP threads ran 10-30x slower under other load.
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$WORK"

echo "== $(date -Is) train manifold corrective $*" | tee -a "$LOG"
PYTHONPATH=. "$PYTHON" -m scorestudio train-corrective --out "$OUT" --work-dir "$WORK" \
    --prior-work-dir "$PRIOR_WORK" --minutes 22 --threads 2 --resume "$@" 2>&1 | tee -a "$LOG"
echo "== $(date -Is) done" | tee -a "$LOG"
cp "$LOG" "$OUT/training_log.txt"

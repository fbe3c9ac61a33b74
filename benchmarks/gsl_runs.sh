#!/usr/bin/env bash
# The guided-sparsity bar runs (docs/gsl.md): fmnist_vgg (widths 32-64-128-128) on the 60,000
# Fashion-MNIST training images, 2 threads. A dense model (8 epochs), then every pruning method
# fine-tunes it for 6 epochs at lr 0.01 (cosine). About 15 min per run on the 2-core machine;
# a killed run continues where it stopped when this script is started again (--resume).
# Then: sparsecnn bench gsl runs/gsl   (accuracy, densities, measured end-to-end speedup)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
R=runs/gsl
prune() {  # name, then the method's own options
  local name=$1; shift
  local resume=""
  [ -f $R/$name/report.json ] && return 0
  [ -f $R/$name/checkpoint.pt ] && resume=--resume
  echo "+ $name" >&2
  "$PY" -m sparsecnn.prune.cli "$@" --out $R/$name --no-progress $resume > $R/$name.log 2>&1
}
mkdir -p $R
prune dense --method dense --epochs 8 --lr 0.05
FT="--epochs 6 --lr 0.01 --warmup-epochs 0 --pretrained $R/dense/model_pruned.pt"
prune esl --method esl --lam 5e-3 $FT
prune gesl --method gesl --lam 5e-3 $FT
prune gmp --method gmp --final-sparsity 0.9 $FT
prune dns --method dns $FT
prune gdns --method gdns $FT
prune gesl-lam8e-3 --method gesl --lam 8e-3 $FT
prune esl-lam8e-3 --method esl --lam 8e-3 $FT
prune gmp-0.8 --method gmp --final-sparsity 0.8 $FT
# a point between the two lasso strengths, for both (the GESL-vs-ESL comparison at equal accuracy)
prune esl-lam6.5e-3 --method esl --lam 6.5e-3 $FT
prune gesl-lam6.5e-3 --method gesl --lam 6.5e-3 $FT
prune gesl-lam1e-2 --method gesl --lam 1e-2 $FT

#!/usr/bin/env bash
# Rebuild the bundled demo PRM (model_store/demo-arith): synthetic data, a tiny Qwen2 PRM trained from
# scratch on CPU, its held-out ProcessBench-style evaluation, and publishing as the store's default.
#   bash scripts/build-demo.sh [WORK_DIR]        # about 25 minutes on 2 CPU cores
set -euo pipefail
work=${1:-/tmp/prm-demo}
store=$(dirname "$0")/../model_store
fixtures=$(dirname "$0")/../tests/fixtures  # the hand-written set: evaluated on, never trained on
steps="--lm-loss --lr-scheduler linear --batch-size 16 --max-steps 2500 --warmup-ratio 0.02 --logging-steps 100 --save-steps 1000"

prm synth --out "$work/data" --train 120000 --heldout 1000 --bon-problems 100 --bon-n 8 --error-rate 0.6 --seed 0
# 1. Arithmetic: the next-token loss teaches a narrow, deep model to compute what each step writes.
prm train --base scratch --data "$work/data/train.jsonl" --out "$work/arith" $steps --lr 2e-3 \
  --scratch-hidden-size 64 --scratch-layers 8 --scratch-intermediate-size 192
# 2. Checking: digit-check copies teach the score head to compare each written result with that arithmetic.
prm train --base "$work/arith" --data "$work/data/train.jsonl" --out "$work/prm" $steps --lr 1e-3 --digit-check 0.5 \
  --eval-processbench "$work/data/heldout.jsonl" --eval-processbench "$fixtures/handwritten_arith.jsonl"
prm eval bon --model "$work/prm" --data "$work/data/bon.jsonl" --out "$work/bon.json" --device cpu
prm publish "$work/prm" --name demo-arith --store "$store" --default

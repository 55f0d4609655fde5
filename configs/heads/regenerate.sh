#!/usr/bin/env bash
# Regenerates configs/heads/stories260K_retrieval.json: Retrieval Heads' scores of stories260K
# (../shared/models/stories260K) for headkv:scores=FILE, from the needle prompts in needles.jsonl (each a
# needle sentence in a short story, then a question the model answers by copying it), each continued by 30
# greedy tokens; kvsim heads --method retrieval keeps the sequences whose continuation recalls at least half
# of the needle's tokens. Run from the project root after building: bash configs/heads/regenerate.sh [kvsim]
set -euo pipefail
cd "$(dirname "$0")/../.."
KVSIM=${1:-build/kvsim}
MODELS=${KVSIM_MODELS:-../shared/models}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$KVSIM" record --model "$MODELS/stories260K/stories260K.bin" --prompts configs/heads/needles.jsonl \
  --generate 30 --dtype float32 --quiet --out "$tmp/needles.h5"
rm -f configs/heads/stories260K_retrieval.json
"$KVSIM" heads --method retrieval --trace "$tmp/needles.h5" --out configs/heads/stories260K_retrieval.json

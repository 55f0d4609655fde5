#!/usr/bin/env bash
# Regenerates traces/samples/stories260K.h5, the embedded real trace: Karpathy's stories260K
# (../shared/models/stories260K) on the four story openings in stories260K_prompts.jsonl, each
# continued by greedy decoding to fill the 512-token context, each with a context_len (its first
# sentence is the context, the second the question). q, k, v, q_pre, k_pre and vo_norm (the per-token
# ||W_o,h v_i||_1 that criticalkv reads) in float32 for every sequence, and the model's attention output o for the first one ("with_o": true), so that the
# self-check test (tests/test_model_trace.cpp) can recompute attention from q, k, v.
# Run from the project root after building: bash traces/samples/regenerate.sh [path/to/kvsim]
# The token ids are reproduced exactly; the tensors to float32 rounding (max |diff| ~2e-5 seen
# between builds), since OpenBLAS kernels and summation order depend on the CPU and the code.
set -euo pipefail
cd "$(dirname "$0")/../.."
KVSIM=${1:-build/kvsim}
MODELS=${KVSIM_MODELS:-../shared/models}
"$KVSIM" record --model "$MODELS/stories260K/stories260K.bin" \
  --prompts traces/samples/stories260K_prompts.jsonl --generate -1 \
  --dtype float32 --pre --record vo_norm,kvzip --kvzip-context 384 --kvzip-chunk 64 \
  --compress --backend cpu --force --out traces/samples/stories260K.h5

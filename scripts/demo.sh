#!/usr/bin/env bash
# `make demo`: a model's whole life on the shared data, as one pipeline (configs/demo.yaml):
# prepare -> tokenizer -> shards -> pretrain -> LoRA classifier -> evaluate -> int8 -> HF + ONNX export ->
# serve check, ending with the summary table and a sample. About 4-5 minutes on 2 cores; a second run
# finds every stage cached. Extra arguments go to `lmforge pipeline` (e.g. --force pretrain, --dry-run,
# pretrain.train.max_seconds=30).
set -euo pipefail
SHARED=${SHARED:-../shared/data}
LM=${LMFORGE:-.venv/bin/lmforge}
export LMFORGE_SHARED_DATA="$SHARED"
$LM pipeline configs/demo.yaml "$@"
echo
echo "Trace any artifact back to the raw data:  $LM lineage runs/demo/export/model.safetensors"

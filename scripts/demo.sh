#!/usr/bin/env bash
# The main job end to end on built-in defaults and the shared data.
set -euo pipefail
SHARED=${SHARED:-../shared/data}
LM=${LMFORGE:-.venv/bin/lmforge}
echo "== tiny-shakespeare: prepare -> char tokenizer -> shards"
$LM prepare "$SHARED/tinyshakespeare/input.txt" --out runs/demo/shakespeare-data
$LM tokenizer train runs/demo/shakespeare-data --out runs/demo/shakespeare-tok tokenizer.kind=char
$LM tokenizer encode runs/demo/shakespeare-data --tokenizer runs/demo/shakespeare-tok --out runs/demo/shakespeare-shards
echo "== Chinese novels: prepare -> byte-level BPE -> shards"
$LM prepare "$SHARED/chinese-text" --out runs/demo/zh-data
$LM tokenizer train runs/demo/zh-data --out runs/demo/zh-tok tokenizer.vocab_size=8000
$LM tokenizer encode runs/demo/zh-data --tokenizer runs/demo/zh-tok --out runs/demo/zh-shards

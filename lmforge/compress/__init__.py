"""Compression: smaller or faster models from trained ones, each verb with a before/after report.

- `quantize.py` (`lmforge quantize`): int8 weight-only or dynamic int8 Linear layers through torchao's
  `quantize_`, saved as a directory with its own marker (`quantization.json` + `quantized.safetensors`) that
  `lmforge.infer.load.load_model` recognises, so generate, evaluate and serve take it like any model; an
  `.onnx` model is handed to the ONNX exporter's `quantize_onnx` (onnxruntime dynamic int8).
- `distill.py` (`lmforge distill`): a student learns from a teacher's logits,
  alpha * KL(teacher || student at T) * T^2 + (1 - alpha) * cross-entropy, in the training loop of
  `lmforge/train/loop.py` over pretraining's token shards; the teacher's logits are computed on the fly or
  cached on disk. The student is an ordinary checkpoint (load_model, --resume).
- `prune.py` (`lmforge prune`): unstructured magnitude pruning (global or per layer, sparsity measured
  exactly) or structured removal of attention heads and MLP channels (physically smaller matrices, the new
  shape in model_config.json), then optional recovery fine-tuning that keeps pruned weights at zero.
- `compare.py`: what every verb measures before and after (size on disk, parameters, validation perplexity,
  greedy decode tokens/s) into `compress_report.json` and a printed table.

Heavy imports (torchao, onnxruntime) stay inside the functions that need them.
"""

"""`lmforge VERB ...`: one verb per stage. Parses, loads the config, calls the stage's entry point.

Every verb takes `--config FILE` and any number of `section.key=value` overrides among its arguments;
without a config file it runs on defaults and its positional inputs. Bad input prints one line
`error: ...` and exits with status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from lmforge.config import Config, dump_yaml, is_override, load_config
from lmforge.errors import LmforgeError
from lmforge.runs import setup_console_logging


def _split_args(tokens: Sequence[str]) -> tuple[list[str], list[str]]:
    """Positional tokens into (inputs, overrides)."""
    inputs, overrides = [], []
    for token in tokens:
        (overrides if is_override(token) else inputs).append(token)
    return inputs, overrides


def _config(args: argparse.Namespace, extra: Sequence[str] = ()) -> tuple[Config, list[str]]:
    inputs, overrides = _split_args(getattr(args, "args", []))
    if getattr(args, "on_error", None):
        overrides.append(f"run.on_error={args.on_error}")
    return load_config(args.config, [*extra, *overrides]), inputs


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    if inputs:
        raise LmforgeError(f"config show: unexpected argument '{inputs[0]}' (overrides look like section.key=value)")
    sys.stdout.write(dump_yaml(cfg))
    return 0


def _no_extra_inputs(verb: str, inputs: list[str]) -> None:
    if inputs:
        raise LmforgeError(f"{verb}: unexpected argument '{inputs[0]}' (overrides look like section.key=value)")


def cmd_prepare(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    from lmforge.data.prepare import run_prepare

    if inputs:
        cfg.data.inputs = inputs
    run_prepare(cfg, out=args.out)
    return 0


def cmd_tokenizer_train(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    from lmforge.tokenizer.train import run_train

    if inputs:
        cfg.tokenizer.inputs = inputs
    run_train(cfg, out=args.out)
    return 0


def cmd_tokenizer_encode(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    from lmforge.tokenizer.encode import run_encode

    if args.tokenizer:
        cfg.tokenizer.path = args.tokenizer
    if len(inputs) > 1:
        raise LmforgeError(f"tokenizer encode: one prepared data directory expected, got {len(inputs)}")
    run_encode(cfg, data_dir=inputs[0] if inputs else None, out=args.out)
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    from lmforge.model.presets import print_model_info

    _no_extra_inputs("model info", inputs[1:])
    if inputs:
        cfg.model.preset = inputs[0]
    print_model_info(cfg.model, batch_size=cfg.train.batch_size)
    return 0


def _apply_train_options(cfg: Config, args: argparse.Namespace) -> None:
    """--out/--resume/--device/--strategy, shared by every verb that runs the training loop."""
    if args.out:
        cfg.train.out = args.out
    if args.resume:
        cfg.train.resume = True
    if args.device:
        cfg.train.device = args.device
    if args.strategy:
        cfg.train.strategy = args.strategy


def cmd_pretrain(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    from lmforge.train.pretrain import run_pretrain

    if len(inputs) > 1:
        raise LmforgeError(f"pretrain: one token-shard directory expected, got {len(inputs)}")
    if inputs:
        cfg.train.data = inputs[0]
    _apply_train_options(cfg, args)
    run_pretrain(cfg)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    from lmforge.finetune.recipe import run_finetune

    data = _one_input("finetune", inputs, "data file or prepared data directory")
    if data:
        cfg.finetune.data = data
    for key in ("task", "method", "base"):
        if getattr(args, key):
            setattr(cfg.finetune, key, getattr(args, key))
    _apply_train_options(cfg, args)
    summary = run_finetune(cfg)
    best = summary.get("best_checkpoint") or summary.get("checkpoint")
    shown = "  ".join(f"{k} {summary[k]:.4f}" for k in ("val_loss", "accuracy", "macro_f1")
                      if isinstance(summary.get(k), float))  # fmt: skip
    print(f"{summary['task']} ({summary['method']}) {summary['steps']} steps  {shown}  best: {best}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from lmforge.eval.tasks import describe_tasks

    if args.list:
        print(describe_tasks())
        return 0
    cfg, inputs = _config(args)
    from lmforge.eval.evaluate import run_evaluate
    from lmforge.eval.report import HEADLINE, fmt

    if len(inputs) > 1:
        raise LmforgeError(f"evaluate: one model expected, got {len(inputs)} (name tasks with --task)")
    if inputs:
        cfg.eval.model = inputs[0]
    if args.task:
        cfg.eval.tasks = list(args.task)
    if args.limit is not None:
        cfg.eval.limit = args.limit
    if args.device:
        cfg.eval.device = args.device
    report = run_evaluate(cfg, out=args.out)
    for name, result in report["tasks"].items():
        keys = HEADLINE.get(result["kind"], list(result["metrics"])[:3])
        shown = "  ".join(f"{k} {fmt(result['metrics'][k])}" for k in keys if k in result["metrics"])
        print(f"{name:16} n={result['n']:<6} {shown}")
    return 0


def _one_input(verb: str, inputs: list[str], what: str) -> str | None:
    if len(inputs) > 1:
        raise LmforgeError(f"{verb}: one {what} expected, got {len(inputs)}")
    return inputs[0] if inputs else None


def cmd_export(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    from lmforge.export import run_export

    if args.base:
        cfg.export.base = args.base
    out = run_export(cfg, _one_input("export", inputs, "model"), fmt=args.format, out=args.out)
    print(out)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    from lmforge.export import run_merge

    if args.base:
        cfg.export.base = args.base
    print(run_merge(cfg, _one_input("merge", inputs, "adapter directory"), out=args.out))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    from lmforge.export import run_convert

    print(run_convert(cfg, _one_input("convert", inputs, "Hugging Face directory"), out=args.out))
    return 0


def _compress_config(args: argparse.Namespace, verb: str, what: str, options: dict[str, str]) -> Config:
    """The shared options of quantize / distill / prune: the one input, --data, --device, --resume; `options`
    maps other flags to the config keys they set, checked like any override."""
    given_options = [f"{key}={getattr(args, flag)}" for flag, key in options.items() if getattr(args, flag) is not None]
    cfg, inputs = _config(args, given_options)
    given = _one_input(verb, inputs, what)
    if given:
        if verb == "distill":
            cfg.compress.data = given
        else:
            cfg.compress.model = given
    if getattr(args, "data", None):
        cfg.compress.data = args.data
    if getattr(args, "device", None):
        cfg.train.device = args.device
    if getattr(args, "resume", False):
        cfg.train.resume = True
    return cfg


def _print_compress_report(report: dict) -> None:
    from lmforge.compress.compare import render_table

    labels = ("teacher", "student") if report["stage"] == "distill" else ("before", "after")
    print(render_table(report, labels))


def cmd_quantize(args: argparse.Namespace) -> int:
    cfg = _compress_config(args, "quantize", "model (a checkpoint, run, Hugging Face directory or .onnx)",
                           {"method": "compress.quantize.method"})  # fmt: skip
    from lmforge.compress.quantize import run_quantize

    _print_compress_report(run_quantize(cfg, out=args.out))
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    cfg = _compress_config(args, "distill", "token-shard directory", {})
    from lmforge.compress.distill import run_distill

    if args.teacher:
        cfg.compress.distill.teacher = args.teacher
    if args.student:
        cfg.compress.distill.student = args.student
    _print_compress_report(run_distill(cfg, out=args.out))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    keys = ("method", "sparsity", "scope", "heads", "mlp", "recovery_steps")
    cfg = _compress_config(args, "prune", "model (a checkpoint, run or Hugging Face directory)",
                           {key: f"compress.prune.{key}" for key in keys})  # fmt: skip
    from lmforge.compress.prune import run_prune

    _print_compress_report(run_prune(cfg, out=args.out))
    return 0


def _generate_config(args: argparse.Namespace, verb: str) -> Config:
    cfg, inputs = _config(args)
    model = _one_input(verb, inputs, "model (a checkpoint, run or Hugging Face directory)")
    if model:
        cfg.generate.model = model
    if args.device:
        cfg.generate.device = args.device
    return cfg


def cmd_generate(args: argparse.Namespace) -> int:
    cfg = _generate_config(args, "generate")
    from lmforge.infer.generate import run_generate

    if args.prompt:
        cfg.generate.prompt = list(args.prompt)
    if args.prompts_file:
        cfg.generate.prompts_file = args.prompts_file
    from lmforge.export.onnx_runner import is_onnx_model, run_generate_onnx

    if is_onnx_model(cfg.generate.model):  # an .onnx file or ONNX export dir: onnxruntime, no PyTorch model
        run_generate_onnx(cfg, stream_output=args.stream, as_json=args.json)
        return 0
    run_generate(cfg, stream_output=args.stream, as_json=args.json)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    cfg = _generate_config(args, "chat")
    from lmforge.infer.chat import run_chat

    if args.system is not None:
        cfg.generate.system = args.system
    run_chat(cfg)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    from lmforge.serve import run_serve

    model = _one_input("serve", inputs, "model (a checkpoint, run, adapter or Hugging Face directory, or .onnx)")
    if model:
        cfg.serve.model = model
    for key in ("base", "classifier", "host", "port", "device"):
        if getattr(args, key) is not None:
            setattr(cfg.serve, key, getattr(args, key))
    run_serve(cfg)
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    from lmforge.serve.dashboard import run_dashboard

    _no_extra_inputs("dashboard", inputs)
    for key in ("runs_dir", "port", "host", "api_base"):
        if getattr(args, key) is not None:
            setattr(cfg.dashboard, key, getattr(args, key))
    run_dashboard(cfg)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    from lmforge.eval.explain import run_explain
    from lmforge.eval.explain_render import terminal_report

    model = _one_input("explain", inputs, "model (a checkpoint, run or Hugging Face directory)")
    if model:
        cfg.explain.model = model
    if args.prompt is not None:
        cfg.explain.prompt = args.prompt
    if args.method:
        cfg.explain.methods = list(args.method)
    if args.target is not None:
        cfg.explain.target = args.target
    result, run_dir = run_explain(cfg, out=args.out)
    color = cfg.explain.color == "always" or (cfg.explain.color == "auto" and sys.stdout.isatty())
    files = sorted(p for p in run_dir.iterdir() if p.suffix in (".png", ".html", ".json") and p.name != "manifest.json")
    print(terminal_report(result, color, files))
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from lmforge.pipeline.runner import plan_pipeline, run_pipeline
    from lmforge.pipeline.spec import load_pipeline

    spec = load_pipeline(args.file, list(args.args), out=args.out)
    if args.dry_run:
        print(plan_pipeline(spec, force=args.force))
        return 0
    run_pipeline(spec, force=args.force)
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from lmforge.pipeline.lineage import format_lineage, lineage, raw_inputs

    if args.json:
        import json

        chains = lineage(args.artifact)
        print(json.dumps({"artifact": args.artifact, "chains": chains, "raw_inputs": raw_inputs(chains)}, indent=2))
    else:
        sys.stdout.write(format_lineage(args.artifact))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    inputs, overrides = _split_args(args.args)
    _no_extra_inputs("sweep", inputs)
    for flag, key in (("trials", "sweep.n_trials"), ("jobs", "sweep.jobs")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    cfg = load_config(args.file, overrides)
    from lmforge.pipeline.sweep import run_sweep

    run_sweep(cfg, out=args.out)
    return 0

def _add_common(p: argparse.ArgumentParser, positional: str, help_text: str) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config; keys overridable as section.key=value")
    p.add_argument("args", nargs="*", metavar=positional, help=help_text + "; and section.key=value overrides")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="A language model's whole life: prepare, tokenize, pretrain, and more.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    p = verbs.add_parser("prepare", help="ingest, clean, deduplicate and split raw text")
    _add_common(p, "PATH", "input files, directories or globs (.txt .jsonl .json .csv .tsv .parquet, .gz/.zst)")
    p.add_argument("--out", "-o", metavar="DIR", help="run directory (default runs/<run.name or 'prepare'>)")
    p.add_argument("--on-error", choices=["raise", "skip"], help="skip bad records and count them in the report")
    p.set_defaults(func=cmd_prepare)

    p = verbs.add_parser("tokenizer", help="train a tokenizer; encode prepared data into token shards")
    tok = p.add_subparsers(dest="tokenizer_verb", metavar="ACTION")
    tok.required = True
    t = tok.add_parser("train", help="train byte-level BPE or a char-level vocabulary")
    _add_common(t, "INPUT", "a prepared data directory, or text/jsonl files")
    t.add_argument("--out", "-o", metavar="DIR", help="run directory (default runs/<run.name or 'tokenizer'>)")
    t.set_defaults(func=cmd_tokenizer_train)
    t = tok.add_parser("encode", help="encode every split of a prepared data directory into token shards")
    _add_common(t, "DATA_DIR", "a prepared data directory")
    t.add_argument("--tokenizer", "-t", metavar="PATH", help="tokenizer.json or its directory")
    t.add_argument("--out", "-o", metavar="DIR", help="run directory (default runs/<run.name or 'shards'>)")
    t.set_defaults(func=cmd_tokenizer_encode)

    p = verbs.add_parser("model", help="inspect model presets")
    mod = p.add_subparsers(dest="model_verb", metavar="ACTION")
    mod.required = True
    m = mod.add_parser("info", help="parameters, FLOPs per token and memory of a preset or config")
    _add_common(m, "PRESET", "a preset name (see `lmforge model info list`)")
    m.set_defaults(func=cmd_model_info)

    p = verbs.add_parser("pretrain", help="train a GPT from token shards")
    _add_common(p, "SHARDS", "a token-shard directory (meta.json)")
    p.add_argument("--out", "-o", metavar="DIR", help="run directory (default runs/<run.name or 'pretrain'>)")
    p.add_argument("--resume", action="store_true", help="continue exactly from the last good checkpoint")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: detected)")
    p.add_argument("--strategy", choices=["auto", "ddp", "fsdp"], help="under torchrun: ddp or fsdp")
    p.set_defaults(func=cmd_pretrain)

    p = verbs.add_parser("finetune", help="instruction-tune (sft) or train a classifier (classify) on a base model")
    _add_common(p, "DATA", "a .jsonl/.json/.csv/.tsv file or a prepared data directory")
    p.add_argument("--task", choices=["sft", "classify"], help="sft (chat/Alpaca records) or classify (text + label)")
    p.add_argument("--base", metavar="MODEL", help="the base: a checkpoint, run directory or Hugging Face directory")
    p.add_argument("--method", choices=["full", "lora"], help="train every weight (full) or LoRA adapters only")
    p.add_argument("--out", "-o", metavar="DIR", help="run directory (default runs/<run.name or 'finetune'>)")
    p.add_argument("--resume", action="store_true", help="continue exactly from the last good checkpoint")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: detected)")
    p.add_argument("--strategy", choices=["auto", "ddp", "fsdp"], help="under torchrun: ddp or fsdp")
    p.set_defaults(func=cmd_finetune)

    p = verbs.add_parser("evaluate", help="benchmarks and metrics of a model: perplexity, LAMBADA, BLEU, ...")
    _add_common(p, "MODEL", "a checkpoint, run directory or Hugging Face directory")
    p.add_argument("--task", "-t", action="append", metavar="NAME",
                   help="a task (repeatable): wikitext2, lambada, lm, multiple_choice, classify, translate, "
                        "multi30k, tatoeba_en_zh, tatoeba_zh_en, or a multiple-choice spec file")
    p.add_argument("--limit", "-n", type=int, metavar="N", help="at most N examples per task (quick runs)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: detected)")
    p.add_argument("--out", "-o", metavar="DIR", help="run directory (default runs/<run.name or 'evaluate'>)")
    p.add_argument("--list", action="store_true", help="list the built-in tasks and exit")
    p.set_defaults(func=cmd_evaluate)

    p = verbs.add_parser("export", help="write a model as a Hugging Face directory, a clean checkpoint or ONNX")
    _add_common(p, "MODEL", "a checkpoint, run directory, LoRA adapter directory or Hugging Face directory")
    p.add_argument("--format", "-f", metavar="FORMAT", help="hf (transformers directory), safetensors "
                   "(lmforge checkpoint without training state) or onnx (onnxruntime graphs, "
                   "export.onnx_int8=true adds int8); default export.format")  # fmt: skip
    p.add_argument("--out", "-o", metavar="DIR", help="directory to write (default runs/<run.name or 'export'>)")
    p.add_argument("--base", metavar="MODEL", help="a LoRA adapter's base model (default: the recorded one)")
    p.set_defaults(func=cmd_export)

    p = verbs.add_parser("merge", help="fold a LoRA adapter into its base model: a plain checkpoint")
    _add_common(p, "ADAPTER_DIR", "a directory with adapter.safetensors + adapter_config.json")
    p.add_argument("--out", "-o", metavar="DIR", help="checkpoint directory (default runs/<run.name or 'merge'>)")
    p.add_argument("--base", metavar="MODEL", help="the base model (default: the one adapter_config.json records)")
    p.set_defaults(func=cmd_merge)

    p = verbs.add_parser("convert", help="a Hugging Face GPT-2/Llama/Mistral/Qwen2 directory as an lmforge checkpoint")
    _add_common(p, "HF_DIR", "a local Hugging Face model directory (config.json + *.safetensors)")
    p.add_argument("--out", "-o", metavar="DIR", help="checkpoint directory (default runs/<run.name or 'convert'>)")
    p.set_defaults(func=cmd_convert)

    p = verbs.add_parser("quantize", help="int8 Linear layers (torchao) or an int8 ONNX model; before/after report")
    _add_common(p, "MODEL", "a checkpoint, run or Hugging Face directory, or an .onnx file / ONNX export")
    p.add_argument("--method", "-m", help="int8_weight_only or int8_dynamic (compress.quantize.method)")
    p.add_argument("--data", metavar="SHARDS", help="token shards for the perplexity (default: the model's own)")
    p.add_argument("--out", "-o", metavar="DIR", help="run directory (default runs/<run.name or 'quantize'>)")
    p.set_defaults(func=cmd_quantize)

    p = verbs.add_parser("distill", help="train a smaller student on a teacher's logits (KL + cross-entropy)")
    _add_common(p, "SHARDS", "a token-shard directory (default: the teacher's training shards)")
    p.add_argument("--teacher", metavar="MODEL", help="the teacher: a checkpoint, run or Hugging Face directory")
    p.add_argument("--student", metavar="MODEL", help="start the student from this checkpoint (default: a new "
                   "model shaped by model.preset / model.*)")  # fmt: skip
    p.add_argument("--out", "-o", metavar="DIR", help="run directory (default runs/<run.name or 'distill'>)")
    p.add_argument("--resume", action="store_true", help="continue exactly from the last good checkpoint")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: detected)")
    p.set_defaults(func=cmd_distill)

    p = verbs.add_parser("prune", help="magnitude (unstructured) or head/channel (structured) pruning, then recovery")
    _add_common(p, "MODEL", "a checkpoint, run or Hugging Face directory")
    p.add_argument("--method", "-m", help="magnitude or structured (compress.prune.method)")
    p.add_argument("--sparsity", help="magnitude: share of weights set to zero, in [0, 1)")
    p.add_argument("--scope", help="magnitude: global (one threshold) or layer (each matrix)")
    p.add_argument("--heads", help="structured: share of attention heads removed per layer")
    p.add_argument("--mlp", help="structured: share of MLP channels removed per layer")
    p.add_argument("--recovery-steps", help="fine-tune this many steps afterwards (train.* settings)")
    p.add_argument("--data", metavar="SHARDS", help="token shards: perplexity, calibration, recovery")
    p.add_argument("--out", "-o", metavar="DIR", help="run directory (default runs/<run.name or 'prune'>)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted recovery fine-tuning")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: detected)")
    p.set_defaults(func=cmd_prune)

    p = verbs.add_parser("generate", help="complete prompts with a model (sampling, stop strings, streaming)")
    _add_common(p, "MODEL", "a checkpoint, run directory or Hugging Face directory, or an .onnx file / ONNX export")
    p.add_argument("--prompt", "-p", action="append", metavar="TEXT", help="a prompt (repeat for a batch)")
    p.add_argument("--prompts-file", metavar="FILE", help="more prompts: one per line (.txt) or jsonl {prompt}")
    p.add_argument("--stream", action="store_true", help="print tokens as they are decoded")
    p.add_argument("--json", action="store_true", help="one JSON line per completion (text, finish_reason)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: detected)")
    p.set_defaults(func=cmd_generate)

    p = verbs.add_parser("chat", help="talk to a model in the terminal (its chat template, streamed replies)")
    _add_common(p, "MODEL", "a checkpoint, run directory or Hugging Face directory")
    p.add_argument("--system", metavar="TEXT", help="the system message")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: detected)")
    p.set_defaults(func=cmd_chat)

    p = verbs.add_parser("serve", help="an OpenAI-compatible HTTP API (continuous batching) plus the dashboard")
    _add_common(p, "MODEL", "a checkpoint, run, LoRA adapter or Hugging Face directory, a classifier, or .onnx")
    p.add_argument("--base", metavar="MODEL", help="a LoRA adapter's base model (default: the recorded one)")
    p.add_argument("--classifier", metavar="MODEL", help="also serve this classifier at /v1/classify")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="port (default 8000; 0: any free port)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or mps (default: detected)")
    p.set_defaults(func=cmd_serve)

    p = verbs.add_parser("explain", help="attention maps, logit lens and token attributions of a model on a text")
    _add_common(p, "MODEL", "a language model or classifier: checkpoint, run or Hugging Face directory")
    p.add_argument("--prompt", "-p", metavar="TEXT", help="the text to explain")
    p.add_argument("--method", "-m", action="append", choices=["attention", "logit_lens", "attribution"],
                   help="repeatable; default: every method that applies to the model")
    p.add_argument("--target", metavar="LABEL", help="attribution target: a class, or a next token (LM)")
    p.add_argument("--out", "-o", metavar="DIR", help="run directory (default runs/<run.name or 'explain'>)")
    p.set_defaults(func=cmd_explain)

    p = verbs.add_parser("dashboard", help="web dashboard: runs, live curves, reports, explain, playground")
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config; keys overridable as section.key=value")
    p.add_argument("args", nargs="*", metavar="OVERRIDE", help="section.key=value (dashboard.stale_seconds=60, ...)")
    p.add_argument("--runs", dest="runs_dir", metavar="DIR", help="the runs directory (default run.runs_dir)")
    p.add_argument("--port", type=int, help="port (default dashboard.port; 0 picks a free one)")
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--api-base", metavar="URL", help="an `lmforge serve` URL for the playground (proxied)")
    p.set_defaults(func=cmd_dashboard)

    p = verbs.add_parser("pipeline", help="run the stages a pipeline file lists: cached, resumable, traced")
    p.add_argument("file", metavar="CONFIG", help="pipeline file (see configs/demo.yaml)")
    p.add_argument("args", nargs="*", metavar="OVERRIDE",
                   help="section.key=value (every stage) or STAGE.section.key=value (that stage)")
    p.add_argument("--out", "-o", metavar="DIR", help="pipeline directory (default pipeline.out, else runs/<name>)")
    p.add_argument("--force", metavar="STAGE", help="rerun this stage and every later one, cached or not")
    p.add_argument("--dry-run", action="store_true", help="show each stage's inputs and whether it would run")
    p.set_defaults(func=cmd_pipeline)

    p = verbs.add_parser("lineage", help="the chain of runs and files an artifact came from, back to raw inputs")
    p.add_argument("artifact", metavar="ARTIFACT", help="a file or run directory (a pipeline directory too)")
    p.add_argument("--json", action="store_true", help="the chain as JSON")
    p.set_defaults(func=cmd_lineage)

    p = verbs.add_parser("sweep", help="hyperparameter search (Optuna TPE + median pruning) over config keys")
    p.add_argument("file", metavar="CONFIG", help="a config with a sweep: section (see configs/sweep-shakespeare.yaml)")
    p.add_argument("args", nargs="*", metavar="OVERRIDE", help="section.key=value")
    p.add_argument("--out", "-o", metavar="DIR", help="sweep directory (default sweep.out, else runs/<run.name or 'sweep'>)")
    p.add_argument("--trials", "-n", type=int, metavar="N", help="number of trials (sweep.n_trials)")
    p.add_argument("--jobs", "-j", type=int, metavar="N", help="trials at once, each its own process (sweep.jobs)")
    p.set_defaults(func=cmd_sweep)

    p = verbs.add_parser("config", help="show the resolved config")
    cfgp = p.add_subparsers(dest="config_verb", metavar="ACTION")
    cfgp.required = True
    c = cfgp.add_parser("show", help="print defaults + CONFIG + overrides as YAML")
    c.add_argument("config", nargs="?", metavar="CONFIG", help="YAML config file")
    c.add_argument("args", nargs="*", metavar="OVERRIDE", help="section.key=value")
    c.set_defaults(func=cmd_config_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Positionals (inputs, overrides) may come after options: argparse leaves those to parse_known_args.
    args, rest = parser.parse_known_args(argv)
    unknown = [t for t in rest if t.startswith("-") and not is_override(t)]
    if unknown or (rest and not hasattr(args, "args")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or rest)}")
    if rest:
        args.args = [*args.args, *rest]
    if args.verb == "config" and args.config and is_override(args.config):
        args.args, args.config = [args.config, *args.args], None
    setup_console_logging(args.verbose)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except MemoryError:
        print("error: out of memory (try a smaller batch or model)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())


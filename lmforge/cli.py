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


def cmd_pretrain(args: argparse.Namespace) -> int:
    cfg, inputs = _config(args)
    from lmforge.train.pretrain import run_pretrain

    if len(inputs) > 1:
        raise LmforgeError(f"pretrain: one token-shard directory expected, got {len(inputs)}")
    if inputs:
        cfg.train.data = inputs[0]
    if args.out:
        cfg.train.out = args.out
    if args.resume:
        cfg.train.resume = True
    if args.device:
        cfg.train.device = args.device
    if args.strategy:
        cfg.train.strategy = args.strategy
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
    if args.out:
        cfg.train.out = args.out
    if args.resume:
        cfg.train.resume = True
    if args.device:
        cfg.train.device = args.device
    if args.strategy:
        cfg.train.strategy = args.strategy
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
    run_generate(cfg, stream_output=args.stream, as_json=args.json)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    cfg = _generate_config(args, "chat")
    from lmforge.infer.chat import run_chat

    if args.system is not None:
        cfg.generate.system = args.system
    run_chat(cfg)
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

    p = verbs.add_parser("export", help="write a model as a Hugging Face directory or a clean checkpoint")
    _add_common(p, "MODEL", "a checkpoint, run directory, LoRA adapter directory or Hugging Face directory")
    p.add_argument("--format", "-f", metavar="FORMAT", help="hf (transformers directory) or safetensors "
                   "(lmforge checkpoint without training state); default export.format")  # fmt: skip
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

    p = verbs.add_parser("generate", help="complete prompts with a model (sampling, stop strings, streaming)")
    _add_common(p, "MODEL", "a checkpoint, run directory or Hugging Face directory")
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


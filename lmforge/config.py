"""One typed config for every stage: dataclasses, loaded from YAML, overridden by `section.key=value`.

A config file holds any of the sections below; each verb reads the sections it needs. Every key can be
set on the command line as a dotted override (`data.quality.min_chars=50`), values parsed as YAML
scalars (`[a, b]` for lists). An unknown key is an error that names the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lmforge.errors import ConfigError

# ---------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    name: str | None = None  # run directory name under runs_dir; default: the stage's name
    runs_dir: str = "runs"
    seed: int = 1337
    on_error: Literal["raise", "skip"] = "raise"  # skip: drop bad records and count them in the report


@dataclass
class ReaderConfig:
    txt_mode: Literal["file", "paragraph", "line"] = "file"  # a .txt document per file / blank-line block / line
    text_field: str = "text"  # jsonl key or csv/parquet column holding the text
    label_field: str | None = None  # classification label key/column, kept beside the text
    instruction_fields: list[str] = field(default_factory=lambda: ["instruction", "input", "output"])
    csv_delimiter: str | None = None  # None: ',' for .csv, tab for .tsv
    max_record_mb: float = 32.0  # a single record (line, row, file) over this is a bad record


@dataclass
class NormalizeConfig:
    enabled: bool = True
    unicode_form: Literal["NFC", "NFKC", "none"] = "NFC"
    strip_html: bool = False
    remove_control: bool = True  # control and zero-width characters, keeping \n and \t
    normalize_whitespace: bool = True  # \r\n -> \n, runs of blank lines, blank lines at the ends
    max_blank_lines: int = 2  # longer runs of blank lines shrink to this many
    # Off by default so raw text (tiny-shakespeare has two such lines) keeps nanoGPT's exact split.
    strip_trailing_spaces: bool = False


@dataclass
class LanguageConfig:
    enabled: bool = True
    keep: list[str] = field(default_factory=list)  # e.g. [en, zh]; empty keeps every language (and tags it)
    sample_chars: int = 10_000  # long documents are judged on this many characters (start, middle, end)
    min_function_word_fraction: float = 0.1  # Latin script: share of en/de/fr/es function words to tag it


@dataclass
class QualityConfig:
    """Gopher/C4-style document filters; set a threshold to null to switch that rule off."""

    enabled: bool = True
    min_chars: int | None = 1
    max_chars: int | None = None
    min_words: int | None = 1  # CJK characters count as words, so Chinese text is not "no words"
    max_words: int | None = None
    min_mean_word_length: float | None = 2.0  # non-CJK text only
    max_mean_word_length: float | None = 12.0
    max_symbol_word_ratio: float | None = 0.1  # '#' and '...' per word
    max_ellipsis_line_fraction: float | None = 0.3
    max_bullet_line_fraction: float | None = 0.9
    min_lines_for_line_rules: int = 3  # line-share rules (ellipsis, bullet, duplicate) need this many lines
    max_duplicate_line_fraction: float | None = None  # Gopher: 0.3; off by default (verse and dialogue repeat)
    max_top_ngram_fraction: float | None = None  # Gopher: 0.2 for the most frequent word 2-gram
    top_ngram_size: int = 2
    max_duplicate_ngram_fraction: float | None = None  # Gopher: 0.15 for repeated word 5-grams
    duplicate_ngram_size: int = 5
    min_alpha_word_fraction: float | None = 0.5  # share of words with at least one letter (CJK included)
    drop_lorem_ipsum: bool = True  # C4


@dataclass
class PiiConfig:
    enabled: bool = True
    email: bool = True
    phone: bool = True
    ip: bool = True


@dataclass
class DedupConfig:
    exact: bool = True
    near: bool = True
    shingle: Literal["char", "word"] = "char"
    shingle_size: int = 5
    num_perm: int = 128
    bands: int = 32  # rows per band = num_perm / bands
    threshold: float = 0.5  # estimated Jaccard at or above which a later document is a near-copy
    near_min_words: int = 10  # shorter documents (CJK characters count as words) get exact dedup only


@dataclass
class SplitConfig:
    val: float = 0.1
    test: float = 0.0
    # A document at least this long is cut into contiguous train|val|test ranges (nanoGPT's last 10%);
    # shorter documents go whole to one split, chosen by a seeded hash.
    contiguous_min_chars: int = 100_000


@dataclass
class DataConfig:
    inputs: list[str] = field(default_factory=list)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    language: LanguageConfig = field(default_factory=LanguageConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    examples_per_step: int = 3  # removed examples kept in the report per step


@dataclass
class TokenizerConfig:
    inputs: list[str] = field(default_factory=list)  # train: a prepared data dir, or text/jsonl files
    path: str | None = None  # encode: a tokenizer.json (or the directory holding it)
    kind: Literal["bpe", "char"] = "bpe"
    vocab_size: int = 8000
    min_frequency: int = 2
    bos_token: str = "<|bos|>"
    eos_token: str = "<|endoftext|>"
    pad_token: str = "<|pad|>"
    unk_token: str = "<|unk|>"
    chat_tokens: list[str] = field(
        default_factory=lambda: ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    )
    jieba: bool = False  # pre-segment Chinese with jieba while training, so merges follow word boundaries
    max_train_mb: float | None = None  # train on at most this much text (None: all)
    shard_max_tokens: int = 500_000_000  # a split larger than this is written in several shard files
    model_max_length: int | None = None  # tokenizer_config.json's model_max_length; None: model.block_size


@dataclass
class ModelConfig:
    preset: str | None = None  # a named preset (see `lmforge model info`); keys below override it
    flavour: Literal["gpt2", "llama"] = "gpt2"
    vocab_size: int | None = None  # None: taken from the tokenizer
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention (llama); None: = n_head
    n_embd: int = 128
    intermediate_size: int | None = None  # None: 4*n_embd (gpt2) or SwiGLU's ~8/3*n_embd (llama)
    head_dim: int | None = None  # None: n_embd // n_head (structured pruning keeps the size, drops heads)
    dropout: float = 0.0
    bias: bool | None = None  # None: True for gpt2, False for llama
    qkv_bias: bool | None = None  # biases of the q/k/v projection only; None: = bias (Qwen2: true, bias false)
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5


@dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    momentum: float = 0.9  # sgd, rmsprop
    grad_clip: float | None = 1.0


@dataclass
class ScheduleConfig:
    name: Literal["cosine", "linear", "constant", "step", "plateau"] = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine/linear decay to lr * min_lr_ratio
    step_size: int = 1000  # step: decay every step_size steps by gamma
    gamma: float = 0.5  # step and plateau decay factor
    patience: int = 3  # plateau: evaluations without improvement before decaying
    # steps: decay over train.max_steps; time: over train.max_seconds (needs it), ending annealed on time
    horizon: Literal["steps", "time"] = "steps"


@dataclass
class TrainConfig:
    data: str | None = None  # directory of token shards (meta.json)
    out: str | None = None
    init_from: str | None = None  # a checkpoint directory to start from
    max_steps: int = 1000
    max_seconds: float | None = None  # stop after this much training wall-clock
    batch_size: int = 16  # sequences per optimizer step across all processes
    micro_batch_size: int | None = None  # sequences per forward pass; None = batch_size / world_size
    sampling: Literal["random", "sequential"] = "random"  # random windows, or epoch-ordered packing
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    # Recompute each transformer block's activations in the backward pass instead of keeping them: activation
    # memory falls to about one block's, for about a third more compute.
    activation_checkpointing: bool = False
    device: str = "auto"
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    eval_every: int = 200
    eval_batches: int = 20
    early_stopping_patience: int | None = None  # evaluations without val improvement before stopping
    sample_every_eval: bool = True
    sample_tokens: int = 100
    sample_prompt: str = "\n"
    log_every: int = 10
    save_every: int = 500
    keep_last: int = 2
    resume: bool = False
    deterministic: bool = True
    threads: int | None = None  # torch.set_num_threads; None leaves torch's default


@dataclass
class GenerateConfig:
    """`lmforge generate` and `lmforge chat`: the model, the prompts and how to sample."""

    model: str | None = None  # a checkpoint, run directory or Hugging Face directory
    prompt: list[str] = field(default_factory=list)  # several prompts are decoded as one batch
    prompts_file: str | None = None  # more prompts: one per line (.txt) or {"prompt": ...} per line (.jsonl)
    max_new_tokens: int = 256
    temperature: float = 0.8  # 0: greedy
    top_k: int | None = None  # keep the k most likely tokens (None or 0: off)
    top_p: float = 1.0  # nucleus: the smallest set of tokens holding this much probability (1: off)
    min_p: float = 0.0  # drop tokens below min_p x the most likely token's probability (0: off)
    repetition_penalty: float = 1.0  # CTRL-style penalty on tokens already seen (1: off)
    stop: list[str] = field(default_factory=list)  # stop when the text contains one (it is not returned)
    seed: int | None = None  # seeded sampling is reproducible
    batch_size: int = 8  # prompts decoded together
    use_cache: bool = True  # KV cache; off recomputes the whole sequence every step (same greedy output)
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    threads: int | None = None  # None: 1 on a CPU when params x prompts per step < 5M (auto_threads)
    system: str | None = None  # chat: the system message


@dataclass
class EvalLMConfig:
    """The generic `lm` task: perplexity and bits per byte of your own text."""

    files: list[str] = field(default_factory=list)  # .txt (one document per file), .jsonl, or a prepared data dir
    split: str = "test"  # the split read from a prepared data directory
    text_field: str = "text"  # .jsonl key holding a document


@dataclass
class EvalMultipleChoiceConfig:
    """The `multiple_choice` task: a .jsonl of questions and a small YAML/JSON spec (see lmforge/eval/tasks.py)."""

    spec: str | None = None  # spec file; its `data` key names the .jsonl (relative to the spec) unless data is set
    data: str | None = None


@dataclass
class EvalClassifyConfig:
    """The `classify` task: gold labels from a data file, predictions from a file (or a classifier callable)."""

    data: str | None = None  # .jsonl, .csv or .tsv with a text and a label per row
    predictions: str | None = None  # one label per line (.txt), or .jsonl with a `prediction` key, in data order
    labels: list[str] = field(default_factory=list)  # the known classes, in confusion-matrix order; []: from data
    text_field: str = "text"
    label_field: str = "label"


@dataclass
class EvalTranslateConfig:
    """Generation tasks (`translate`, `multi30k`, `tatoeba_en_zh`, `tatoeba_zh_en`): greedy decoding, BLEU, chrF."""

    source: str | None = None  # `translate`: one source sentence per line (.txt), or .jsonl with source/target
    reference: str | None = None  # `translate` with a .txt source: the references, line-aligned
    template: str | None = None  # prompt with a {source} slot; None: the task's own
    tokenize: str | None = None  # sacrebleu tokenizer: 13a, zh, intl, char, none; None: the task's own
    max_new_tokens: int = 64
    stop: list[str] = field(default_factory=lambda: ["\n"])  # generation ends at the first of these


@dataclass
class EvalConfig:
    """`lmforge evaluate`: which model, which tasks, how much of each, and how to window long documents."""

    model: str | None = None  # a checkpoint, run directory or Hugging Face directory
    tasks: list[str] = field(default_factory=list)  # task names (see `lmforge evaluate --list`) or spec files
    limit: int | None = None  # at most this many examples (documents, passages, questions) per task
    batch_size: int = 8  # sequences per forward pass
    max_length: int | None = None  # tokens per forward pass (sliding window); None: the model's block_size
    stride: int | None = None  # window step for long documents (< max_length); None: max_length // 2
    truncation: Literal["left", "error"] = "left"  # an over-long context: drop its oldest tokens (counted), or fail
    worst_n: int = 10  # worst examples per task written into the report
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    data_dir: str | None = None  # built-in benchmarks' data; None: $LMFORGE_SHARED_DATA, else ../shared/data
    lm: EvalLMConfig = field(default_factory=EvalLMConfig)
    multiple_choice: EvalMultipleChoiceConfig = field(default_factory=EvalMultipleChoiceConfig)
    classify: EvalClassifyConfig = field(default_factory=EvalClassifyConfig)
    translate: EvalTranslateConfig = field(default_factory=EvalTranslateConfig)


@dataclass
class LoraConfig:
    """LoRA adapters (lmforge/model/lora.py): which Linear layers get one, and its size."""

    rank: int = 8
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # on the LoRA branch's input only
    # fnmatch patterns over module names, matched whole or as a dotted suffix: `mlp.*` hits blocks.3.mlp.up
    targets: list[str] = field(default_factory=lambda: ["attn.qkv", "attn.out"])


@dataclass
class ExportConfig:
    """`lmforge export` (and `merge`, `convert`): which model, which format, where to."""

    model: str | None = None  # a checkpoint, run directory, LoRA adapter directory or Hugging Face directory
    format: str = "hf"  # hf (transformers directory), safetensors (a clean lmforge checkpoint) or onnx
    out: str | None = None  # the directory written; None: runs/<run.name or the verb>
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # weights as written
    base: str | None = None  # a LoRA adapter's base model, overriding the path its adapter_config.json records
    overwrite: bool = False  # replace an existing non-empty output directory that is not an earlier export
    onnx_int8: bool = False  # onnx: also write model.int8.onnx (int8 weights, onnxruntime dynamic quantization)
    onnx_atol: float = 1e-4  # onnx: largest logits difference from PyTorch the export's check accepts
    eval_reports: list[str] = field(default_factory=list)  # model card: evaluation runs/report.json files to cite


@dataclass
class FinetuneConfig:
    """`lmforge finetune`: instruction tuning (sft) or a classification head (classify) over a base model.

    Training hyperparameters come from `train:` (lr, steps, batch, schedule, eval_every, early stopping,
    precision, resume); LoRA's shape from `lora:`.
    """

    task: Literal["sft", "classify"] = "sft"
    method: Literal["full", "lora"] = "full"
    base: str | None = None  # the base model: a checkpoint, run directory or Hugging Face directory
    data: str | None = None  # a prepared data directory, or a .jsonl / .json / .csv / .tsv file
    val_data: str | None = None  # validation file; None: the prepared dir's val split, else val_fraction
    val_fraction: float = 0.1  # held out of `data` (seeded) when there is no validation data
    text_field: str = "text"  # classify: the text column / key
    label_field: str = "label"  # classify: the label column / key
    messages_field: str = "messages"  # sft: a chat record's list of {role, content}
    instruction_fields: list[str] = field(default_factory=lambda: ["instruction", "input", "output"])
    system: str | None = None  # sft: a system message put before every instruction record
    labels: list[str] = field(default_factory=list)  # classify: the classes in order; []: sorted from data
    max_length: int | None = None  # tokens per example (longer ones are truncated, counted); None: block_size
    packing: bool = False  # sft: several examples per row, attention kept inside each; else padding
    group_by_length: bool = False  # batches of rows of similar length (less padding), in a shuffled order
    # classify: auto = the last real token's state (decoder) or the mean over real tokens (encoder); max: each
    # feature's largest value over the real tokens; concat (decoder): [last, max, mean]; cls: an encoder's
    # first token
    pooling: Literal["auto", "last", "mean", "max", "concat", "cls"] = "auto"
    class_weights: Literal["balanced"] | list[float] | None = None  # classify: CE weights per class
    focal_gamma: float = 0.0  # classify: focal loss exponent (0: plain cross-entropy)
    lm_loss_weight: float = 0.0  # classify over a decoder: weight of an auxiliary next-token loss (GPT-1)
    freeze: list[str] = field(default_factory=list)  # full: parameter patterns kept frozen (`wte`, `blocks.0.*`)
    select_metric: Literal["auto", "val_loss", "macro_f1", "accuracy"] = "auto"  # auto: macro_f1 for classify


@dataclass
class DashboardConfig:
    """`lmforge dashboard` (and the page `lmforge serve` serves): runs, curves, reports, playground."""

    runs_dir: str | None = None  # the runs to show; None: run.runs_dir
    host: str = "127.0.0.1"
    port: int = 8765
    api_base: str | None = None  # an `lmforge serve` URL the playground talks to (proxied); None: no model
    stale_seconds: float = 300.0  # a run without a manifest and quiet this long shows as "interrupted"
    explain: bool = True  # the explain view may load models from the runs directory to compute on demand


@dataclass
class ExplainConfig:
    """`lmforge explain`: attention maps, logit lens, token attributions of one text."""

    model: str | None = None  # an LM or a classifier: checkpoint, run or Hugging Face directory
    prompt: str | None = None  # the text explained
    methods: list[str] = field(default_factory=list)  # attention, logit_lens, attribution; []: all that apply
    target: str | None = None  # attribution: the class (classifier) or next token (LM); None: the predicted
    top_k: int = 5  # logit lens: predictions kept per layer and position
    ig_steps: int = 32  # integrated gradients: steps of the path integral
    baseline: str | None = None  # attribution: the token that replaces the text; None: the pad token
    max_tokens: int = 256  # longer prompts are cut (from the left) to this many tokens
    color: Literal["auto", "always", "never"] = "auto"  # ANSI colours in the terminal
    device: str = "cpu"


@dataclass
class PairConfig:
    """The pipeline's `pair` stage: two line-aligned files (source, target) as instruction records (jsonl)."""

    instruction: str = "Translate to German."
    instruction_field: str = "instruction"
    source_field: str = "input"
    target_field: str = "output"
    max_records: int | None = None  # the first N pairs only; None: all


@dataclass
class PipelineConfig:
    """`lmforge pipeline FILE`: the stages, in the order they run (see configs/demo.yaml for the format).

    Each stage is a mapping: `stage` (its kind: prepare, tokenizer, encode, pretrain, finetune, evaluate,
    export, ...), `name` (needed when a kind appears twice), `inputs` (stage names or paths),
    `config_file` (a config applied first) and `config` (that stage's overrides of the shared sections).
    Checked by lmforge/pipeline/spec.py.
    """

    name: str | None = None  # default: the file's name without .yaml
    out: str | None = None  # the pipeline's directory; default runs/<name>
    config_file: str | None = None  # an ordinary config under the file's own shared sections
    stages: list[dict[str, Any]] = field(default_factory=list)
    sample_prompt: str | None = "\n"  # the summary ends with a sample from the last model; null: none
    sample_tokens: int = 200
    pair: PairConfig = field(default_factory=PairConfig)  # settings of `pair` stages


@dataclass
class SweepParam:
    """One searched key: a range (`low`, `high`, optional `log` or `step`) or a list of `choices`."""

    type: Literal["float", "int", "categorical"] | None = None  # None: categorical with choices, int for ints
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Any] = field(default_factory=list)


@dataclass
class SweepConfig:
    """`lmforge sweep FILE`: Optuna TPE search over config keys; each trial is one training run."""

    command: Literal["pretrain", "finetune"] = "pretrain"  # the verb each trial runs
    inputs: list[str] = field(default_factory=list)  # its positional input (token shards / fine-tuning data)
    params: dict[str, SweepParam] = field(default_factory=dict)  # dotted config key -> its search space
    objective: str = "val_loss"  # a metric of the trial's evaluations (val_loss, macro_f1, accuracy, ...)
    direction: Literal["auto", "minimize", "maximize"] = "auto"  # auto: minimize losses, maximize the rest
    n_trials: int = 10
    jobs: int = 1  # trials run at once, each in its own process
    seed: int = 0  # the sampler's seed
    pruner_startup_trials: int = 2  # MedianPruner: trials finished before any is pruned
    pruner_warmup_steps: int = 0  # MedianPruner: training steps of a trial before it may be pruned
    trial_threads: int | None = None  # torch threads per trial; None: cores / jobs
    out: str | None = None  # default runs/<run.name or 'sweep'>


@dataclass
class ServeConfig:
    """`lmforge serve`: an OpenAI-compatible HTTP API over one model, continuous batching, the dashboard."""

    model: str | None = None  # checkpoint, run, LoRA adapter or HF dir, classifier checkpoint, or a .onnx file
    base: str | None = None  # a LoRA adapter's base model; None: the one its adapter_config.json records
    classifier: str | None = None  # also serve this classifier at /v1/classify (beside a language model)
    model_name: str | None = None  # the id clients send as "model"; None: the model path's name
    host: str = "127.0.0.1"  # loopback only unless set (0.0.0.0: every interface)
    port: int = 8000
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    threads: int | None = None  # torch threads; None: 1 for a model under 5M parameters on a CPU
    max_batch_size: int = 16  # sequences decoded together (KV-cache rows)
    max_queue: int = 64  # requests waiting for a free row; beyond that a request gets 429
    max_prefill_tokens: int = 2048  # prompt tokens prefilled between two decode steps (at least one prompt)
    default_max_tokens: int = 256  # when a request names none (cut to the room left in the context)
    max_tokens_limit: int | None = None  # the largest max_tokens accepted; None: the model's context
    max_n: int = 8  # choices per request (`n`, times the prompts of a batch)
    max_body_bytes: int = 1_048_576  # larger request bodies get 413
    api_keys_env: str = "LMFORGE_API_KEYS"  # environment variable with comma-separated API keys
    api_keys_file: str | None = None  # a file of API keys, one per line; with either, /v1 needs a Bearer key
    runs_dir: str | None = None  # the dashboard's runs; None: dashboard.runs_dir, else run.runs_dir
    dashboard: bool = True  # also serve the dashboard and playground (when installed)
    shutdown_timeout: float = 30.0  # seconds in-flight requests get to finish on SIGTERM / Ctrl-C
    access_log: bool = False  # uvicorn's per-request log lines


@dataclass
class CompressEvalConfig:
    """The before/after comparison every compress verb writes (compress_report.json and a table)."""

    windows: int = 32  # validation windows (block_size tokens each) for the perplexity; 0: skip it
    batch_size: int = 8  # windows per forward pass
    gen_tokens: int = 64  # greedy tokens decoded (batch of one) to time generation; 0: skip it
    prompt_tokens: int = 16  # the timing prompt: the first tokens of the validation split
    repeats: int = 3  # a timing is the median of this many runs (after one warm-up)
    threads: int | None = None  # torch.set_num_threads while measuring; None leaves torch's default


@dataclass
class QuantizeConfig:
    """`lmforge quantize`: int8 weights of the Linear layers (torchao), or an ONNX model's (onnxruntime)."""

    method: Literal["int8_weight_only", "int8_dynamic"] = "int8_weight_only"  # dynamic: activations too
    skip: list[str] = field(default_factory=list)  # fnmatch patterns of Linear layers kept in float
    # Embedding tables (and so a tied output head) stored as int8 with per-row scales and widened to float
    # when loaded: a smaller file; lookups stay float (torchao's int8 embedding widens the whole table per call)
    embeddings: bool = True


@dataclass
class DistillConfig:
    """`lmforge distill`: a student (the `model:` section, or a checkpoint) learns from a teacher's logits."""

    teacher: str | None = None  # a checkpoint, run or Hugging Face directory
    student: str | None = None  # start from this checkpoint (e.g. a pruned teacher); None: a new model: `model:`
    alpha: float = 0.5  # loss = alpha * KL(teacher || student at temperature)*T^2 + (1 - alpha) * cross-entropy
    temperature: float = 1.0  # softens both distributions; short runs of small students did best at 1
    cache_teacher: bool = False  # compute the teacher's logits for every step once, on disk, and reuse them
    cache_dir: str | None = None  # None: <run>/teacher_cache
    cache_max_gb: float = 8.0  # refuse a cache larger than this (steps x batch x block x vocab x 2 bytes)


@dataclass
class PruneConfig:
    """`lmforge prune`: zero the smallest weights (magnitude), or remove heads and MLP channels (structured)."""

    method: Literal["magnitude", "structured"] = "magnitude"
    sparsity: float = 0.5  # magnitude: share of the target weights set to zero, in [0, 1)
    scope: Literal["global", "layer"] = "global"  # magnitude: one threshold over all targets, or each matrix
    targets: list[str] = field(default_factory=lambda: ["blocks.*"])  # magnitude: Linear layers (fnmatch)
    heads: float = 0.0  # structured: share of attention heads removed in every layer (of each kv group: GQA)
    mlp: float = 0.0  # structured: share of MLP channels removed in every layer
    calibration_batches: int = 4  # structured: batches of training windows that score heads and channels
    recovery_steps: int = 0  # then fine-tune this many steps on the shards (train.* settings); 0: none
    recovery_alpha: float = 0.0  # > 0: recover by distilling from the unpruned model (distill.temperature)


@dataclass
class CompressConfig:
    """`lmforge quantize | distill | prune`: shared inputs and the before/after evaluation."""

    model: str | None = None  # quantize, prune: a checkpoint, run or Hugging Face dir (quantize: or .onnx)
    data: str | None = None  # token shards: perplexity, calibration, training; None: the model's own (info.json)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    eval: CompressEvalConfig = field(default_factory=CompressEvalConfig)


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    compress: CompressConfig = field(default_factory=CompressConfig)


# ---------------------------------------------------------------------------------------------------------
# Loading, overriding, validating
# ---------------------------------------------------------------------------------------------------------


def valid_keys(cls: type = Config, prefix: str = "") -> list[str]:
    """Every dotted key of a config class, sections and leaves alike."""
    keys = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        keys.append(path)
        sub = _dataclass_type(_hints(cls)[f.name])
        if sub is not None:
            keys.extend(valid_keys(sub, path + "."))
    return keys


def _closest(key: str, candidates: list[str]) -> str | None:
    leaf = key.rsplit(".", 1)[-1]
    # A misspelt leaf in the right section, or a leaf placed in the wrong section: try both.
    by_path = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    by_leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf]
    if by_leaf:
        return difflib.get_close_matches(key, by_leaf, n=1, cutoff=0.0)[0]
    if by_path:
        return by_path[0]
    leaves = difflib.get_close_matches(leaf, [c.rsplit(".", 1)[-1] for c in candidates], n=1, cutoff=0.75)
    if leaves:
        return next(c for c in candidates if c.rsplit(".", 1)[-1] == leaves[0])
    return None


def unknown_key_error(key: str, where: str = "") -> ConfigError:
    hint = _closest(key, valid_keys())
    suffix = f" (did you mean '{hint}'?)" if hint else ""
    return ConfigError(f"{where}unknown config key '{key}'{suffix}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _dataclass_type(tp: Any) -> type | None:
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check `value` against the type hint `tp`, converting where YAML is looser than Python."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    bad = ConfigError(f"{where}config key '{key}': expected {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}config key '{key}': expected one of {list(args)}, got {value!r}")
    if origin is list:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            value = [value]  # `data.inputs=file.txt` means a one-item list
        if not isinstance(value, list | tuple):
            raise bad
        return [_coerce(v, args[0], f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return {str(k): _coerce(v, args[1], f"{key}.{k}", where) for k, v in value.items()}
    sub = _dataclass_type(tp)
    if sub is not None:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}config key '{key}': expected a mapping, got {value!r}")
        return _build(sub, value, key + ".", where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise bad
    if tp is Any:
        return value
    raise bad


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, values: dict[str, Any], prefix: str, where: str) -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise unknown_key_error(f"{prefix}{key}", where)
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}", where)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b.c=value` -> ('a.b.c', parsed value); the value is read as a YAML scalar or flow list."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def is_override(token: str) -> bool:
    """A command-line token that sets a config key: `section.key=value` with a known section."""
    key, sep, _ = token.partition("=")
    section = key.split(".", 1)[0]
    return bool(sep) and "." in key and section in {f.name for f in dataclasses.fields(Config)}


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then each `key=value` override, validated as a whole."""
    tree: dict[str, Any] = {}
    where = ""
    if path is not None:
        path = Path(path)
        where = f"{path}: "
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError(f"{path}{line}: {problem}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config file must be a mapping of sections")
        tree = loaded
    cfg = _build(Config, tree, "", where)
    for text in overrides:
        key, value = parse_override(text)
        cfg = apply_override(cfg, key, value)
    return cfg


def apply_override(cfg: Config, key: str, value: Any) -> Config:
    """Return a copy of `cfg` with one dotted key set, checked against the key's type."""
    if key not in valid_keys():
        raise unknown_key_error(key, "override: ")
    tree = to_dict(cfg)
    _set_dotted(tree, key, value)
    return _build(Config, tree, "", "override: ")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


# libyaml's emitter when PyYAML was built with it: the pure-Python one takes ~0.1 s for a whole config.
_SafeDumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def dump_yaml(cfg: Any) -> str:
    return yaml.dump(to_dict(cfg), Dumper=_SafeDumper, sort_keys=False, allow_unicode=True)

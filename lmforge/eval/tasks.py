"""The task registry: each task reads its data, runs the model, and returns its metrics and worst examples.

A task is a small object with a `name`, a `kind`, `needs_model`, `inputs()` (the files it reads, for the
run manifest) and `run(bundle, cfg) -> dict`. Register a builder with `@register("name", "what it is")`;
`build_task(name, cfg)` makes one from a name, or from a spec file path (`my_task.yaml`), so adding a
multiple-choice benchmark is a .jsonl file plus a few lines of spec:

    # my_task.yaml
    type: multiple_choice              # the only spec type so far
    name: my_task                      # default: the file's stem
    data: my_task.jsonl                # relative to this file
    context: "Question: {question}\\nAnswer:"   # {field} slots filled from each record (default "{context}")
    choices: choices                   # the field holding the list of choices (default "choices")
    gold: answer                       # the field holding the gold choice: its index or its text ("gold")
    target_delimiter: " "              # put between context and each choice (default one space)

Built-in tasks:
  wikitext2       WikiText-2 raw test split, one document per article: loss, perplexity, bits per byte
  lm              the same metrics on your files (eval.lm.files: .txt, .jsonl, or a prepared data dir)
  lambada         LAMBADA (OpenAI's version): last-word accuracy and the target word's perplexity
  multiple_choice a .jsonl + spec (eval.multiple_choice.spec / .data): acc, acc_norm by log-likelihood
  classify        accuracy, P/R/F1 per class, macro/weighted, confusion matrix, from predictions
  translate       greedy generation on a prompt template: BLEU, chrF, exact match (eval.translate.*)
  multi30k        Multi30K test_2016_flickr English -> German
  tatoeba_en_zh   Tatoeba English -> Chinese (BLEU tokenize 'zh'); tatoeba_zh_en the other way

Scoring conventions follow lm-evaluation-harness: loglikelihood contexts are encoded without special
tokens (an empty context becomes the EOS token); documents for perplexity start with the EOS token (the
document separator lmforge trains with), so every token of the text is scored and bits per byte covers the
whole text. Contexts longer than eval.max_length lose their oldest tokens, and the report counts them
(eval.truncation=error makes that an error instead).
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml
from tqdm import tqdm

from lmforge.config import EvalConfig
from lmforge.errors import ConfigError, DataError
from lmforge.eval import metrics
from lmforge.eval.scoring import ModelBundle, Request, encode_pair, rolling_windows, score

Predictor = Callable[[list[str]], list[str]]  # texts -> predicted labels (the classification seam)


class Task(Protocol):
    name: str
    kind: str  # lm, lambada, multiple_choice, classify, translate: how the report shows the result
    needs_model: bool

    def inputs(self) -> list[Path]: ...

    def run(self, bundle: ModelBundle | None, cfg: EvalConfig) -> dict[str, Any]: ...


TaskBuilder = Callable[[EvalConfig], Task]
TASKS: dict[str, tuple[TaskBuilder, str]] = {}


def register(name: str, description: str) -> Callable[[TaskBuilder], TaskBuilder]:
    def wrap(builder: TaskBuilder) -> TaskBuilder:
        TASKS[name] = (builder, description)
        return builder

    return wrap


def build_task(name: str, cfg: EvalConfig) -> Task:
    """The task called `name`, or the spec-file task at the path `name` (.yaml, .yml, .json)."""
    if name in TASKS:
        return TASKS[name][0](cfg)
    if name.endswith((".yaml", ".yml", ".json")):
        return task_from_spec(Path(name))
    hint = difflib.get_close_matches(name, list(TASKS), n=1, cutoff=0.5)
    suffix = f" (did you mean '{hint[0]}'?)" if hint else f" (known: {', '.join(TASKS)})"
    raise ConfigError(f"unknown task '{name}'{suffix}")


def describe_tasks() -> str:
    return "\n".join(f"{name:16} {desc}" for name, (_, desc) in TASKS.items())


# ---------------------------------------------------------------------------------------------------------
# Shared helpers: data files, limits, progress
# ---------------------------------------------------------------------------------------------------------


def shared_data_dir(cfg: EvalConfig) -> Path:
    """Where the built-in benchmarks live: eval.data_dir, $LMFORGE_SHARED_DATA, or ../shared/data."""
    if cfg.data_dir:
        return Path(cfg.data_dir)
    env = os.environ.get("LMFORGE_SHARED_DATA")
    if env:
        return Path(env)
    here = Path("../shared/data")
    beside_repo = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return here if here.is_dir() or not beside_repo.is_dir() else beside_repo


def need_file(path: str | Path | None, key: str, task: str) -> Path:
    if not path:
        raise ConfigError(f"task '{task}' needs {key}")
    p = Path(path)
    if not p.is_file():
        raise DataError(f"task '{task}': no such file: {p}")
    return p


def builtin_file(cfg: EvalConfig, relative: str, task: str) -> Path:
    p = shared_data_dir(cfg) / relative
    if not p.is_file():
        raise DataError(f"task '{task}': data file not found: {p} (set eval.data_dir or LMFORGE_SHARED_DATA)")
    return p


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line; a line that is not a JSON object is an error."""
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
                if not isinstance(record, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
                yield lineno, record
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def field_of(record: dict[str, Any], key: str, path: Path, lineno: int) -> Any:
    if key not in record:
        raise DataError(f"{path}:{lineno}: missing field '{key}'")
    return record[key]


def take(items: list[Any], limit: int | None, task: str, source: str) -> list[Any]:
    """The first `limit` items; an empty set is an error naming where it came from."""
    if limit is not None:
        items = items[:limit]
    if not items:
        raise DataError(f"task '{task}': the evaluation set is empty ({source})")
    return items


def progress(total: float, desc: str) -> tqdm:
    """A progress bar on stderr in examples per second (hidden when stderr is not a terminal)."""
    return tqdm(
        total=total,
        desc=desc,
        unit="ex",
        file=sys.stderr,
        disable=None,
        dynamic_ncols=True,
        mininterval=0.5,
        leave=False,
    )


def excerpt(text: str, n: int = 240, tail: bool = False) -> str:
    text = text.replace("\r", "")
    if len(text) <= n:
        return text
    return "…" + text[-n:] if tail else text[:n] + "…"


def fill_template(template: str, record: dict[str, Any], where: str) -> str:
    """Replace each {field} with the record's value; a field the record lacks is an error naming it."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in record:
            raise DataError(f"{where}: missing field '{key}' (used by the template)")
        return str(record[key])

    return re.sub(r"\{(\w+)\}", sub, template)


# ---------------------------------------------------------------------------------------------------------
# Language modelling: perplexity and bits per byte over documents, sliding window
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Document:
    text: str
    source: str  # file[:line]


# Two equation lines in the "Constant k filter" article look like article headings (the data README's rule).
_WIKITEXT_NOT_HEADINGS = {" = 1 rad / s and a nominal impedance k = ", " = 1 henry and capacitance C = "}
_WIKITEXT_HEADING = re.compile(r"^ = [^=].* = $")


def wikitext_articles(path: Path) -> list[Document]:
    """WikiText raw text split into articles at the ` = Title = ` lines; CRLF becomes LF."""
    lines = path.read_text(encoding="utf-8").replace("\r\n", "\n").splitlines(keepends=True)
    docs: list[Document] = []
    current: list[str] = []
    start = 1
    for lineno, line in enumerate(lines, 1):
        heading = (
            _WIKITEXT_HEADING.match(line.rstrip("\n")) and line.rstrip("\n") not in _WIKITEXT_NOT_HEADINGS
        )
        if heading and current:
            docs.append(Document("".join(current), f"{path.name}:{start}"))
            current, start = [], lineno
        current.append(line)
    if current:
        docs.append(Document("".join(current), f"{path.name}:{start}"))
    return [d for d in docs if d.text.strip()]


def read_documents(paths: Sequence[str], split: str, text_field: str) -> list[Document]:
    """Documents from .txt files (one each), .jsonl files (text_field per line), prepared data dirs."""
    docs: list[Document] = []
    for name in paths:
        p = Path(name)
        if p.is_dir():
            from lmforge.data.documents import iter_records, split_path

            file = split_path(p, split)
            for i, record in enumerate(iter_records(file), 1):
                docs.append(Document(str(field_of(record, "text", file, i)), f"{file.name}:{i}"))
        elif p.suffix == ".jsonl":
            for lineno, record in read_jsonl(p):
                text = field_of(record, text_field, p, lineno)
                if not isinstance(text, str):
                    raise DataError(f"{p}:{lineno}: field '{text_field}' is not a string")
                docs.append(Document(text, f"{p.name}:{lineno}"))
        elif p.is_file():
            try:
                docs.append(Document(p.read_text(encoding="utf-8"), p.name))
            except UnicodeDecodeError:
                raise DataError(f"{p}: not UTF-8 text") from None
        else:
            raise DataError(f"task 'lm': no such file or directory: {p}")
    return [d for d in docs if d.text]


@dataclass
class LMTask:
    name: str
    load: Callable[[], list[Document]]
    files: list[Path]
    kind: str = "lm"
    needs_model: bool = True

    def inputs(self) -> list[Path]:
        return self.files

    def run(self, bundle: ModelBundle | None, cfg: EvalConfig) -> dict[str, Any]:
        assert bundle is not None
        docs = take(self.load(), cfg.limit, self.name, ", ".join(map(str, self.files)))
        stride = cfg.stride if cfg.stride is not None else max(1, bundle.max_length // 2)
        prefix = [bundle.eos_id] if bundle.eos_id is not None else []
        requests: list[Request] = []
        owner: list[int] = []  # request -> document
        doc_tokens: list[int] = []
        for d, doc in enumerate(docs):
            ids = prefix + bundle.encode(doc.text)
            doc_tokens.append(len(ids) - 1)
            for begin, end, n_scored in rolling_windows(len(ids), bundle.max_length, stride):
                requests.append(Request(ids[begin:end], n_scored))
                owner.append(d)
        windows_per_doc = [0] * len(docs)
        for d in owner:
            windows_per_doc[d] += 1
        with progress(len(docs), self.name) as bar:
            scored = score(bundle, requests, on_done=lambda i: bar.update(1 / windows_per_doc[owner[i]]))
        nll = [0.0] * len(docs)
        for d, s in zip(owner, scored):
            nll[d] -= s.total
        n_tokens = sum(doc_tokens)
        n_bytes = sum(len(doc.text.encode("utf-8")) for doc in docs)
        n_words = sum(len(doc.text.split()) for doc in docs)
        result = metrics.lm_metrics(sum(nll), n_tokens, n_bytes, n_words)
        notes = []
        if not prefix:
            notes.append("the tokenizer has no EOS token: each document's first token is not scored")
        order = sorted(range(len(docs)), key=lambda d: -nll[d] / max(doc_tokens[d], 1))
        worst = [
            {
                "source": docs[d].source,
                "loss": nll[d] / max(doc_tokens[d], 1),
                "tokens": doc_tokens[d],
                "text": excerpt(docs[d].text),
            }
            for d in order[: cfg.worst_n]
            if doc_tokens[d] > 0
        ]
        return {
            "n": len(docs),
            "metrics": result,
            "details": {
                "tokens": n_tokens,
                "bytes": n_bytes,
                "words": n_words,
                "windows": len(requests),
                "max_length": bundle.max_length,
                "stride": stride,
                "eos_prefix": bool(prefix),
            },
            "notes": notes,
            "worst": worst,
        }


@register("wikitext2", "WikiText-2 raw test split (articles): loss, perplexity, bits per byte")
def _wikitext2(cfg: EvalConfig) -> Task:
    path = builtin_file(cfg, "lm-eval/wikitext-2-raw/wiki.test.raw", "wikitext2")
    return LMTask("wikitext2", lambda: wikitext_articles(path), [path])


@register("lm", "perplexity and bits per byte of eval.lm.files (.txt, .jsonl, prepared data dir)")
def _lm(cfg: EvalConfig) -> Task:
    lm = cfg.lm
    if not lm.files:
        raise ConfigError(
            "task 'lm' needs eval.lm.files (text or .jsonl files, or a prepared data directory)"
        )
    files = [Path(f) for f in lm.files]
    for f in files:
        if not f.exists():
            raise DataError(f"task 'lm': no such file or directory: {f}")
    return LMTask("lm", lambda: read_documents(lm.files, lm.split, lm.text_field), files)


# ---------------------------------------------------------------------------------------------------------
# LAMBADA: the last word from its context
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LambadaTask:
    path: Path
    name: str = "lambada"
    kind: str = "lambada"
    needs_model: bool = True

    def inputs(self) -> list[Path]:
        return [self.path]

    def examples(self) -> list[tuple[str, str, str]]:
        """(where, context, target): context = text up to the last space, target = " " + last word."""
        out = []
        for lineno, record in read_jsonl(self.path):
            text = field_of(record, "text", self.path, lineno)
            if not isinstance(text, str) or " " not in text:
                raise DataError(f"{self.path}:{lineno}: field 'text' needs a context and a last word")
            context, last = text.rsplit(" ", 1)
            out.append((f"{self.path}:{lineno}", context, " " + last))
        return out

    def run(self, bundle: ModelBundle | None, cfg: EvalConfig) -> dict[str, Any]:
        assert bundle is not None
        examples = take(self.examples(), cfg.limit, self.name, str(self.path))
        pairs = [encode_pair(bundle, ctx, tgt, cfg.truncation, where) for where, ctx, tgt in examples]
        requests = [Request(p.context + p.continuation, len(p.continuation)) for p in pairs]
        with progress(len(requests), self.name) as bar:
            scored = score(bundle, requests, on_done=lambda i: bar.update(1))
        lls = [s.total for s in scored]
        hits = [s.is_greedy(p.continuation) for s, p in zip(scored, pairs)]
        truncated = sum(p.truncated > 0 for p in pairs)
        order = sorted(range(len(examples)), key=lambda i: lls[i])
        worst = [
            {
                "source": examples[i][0],
                "loss": -lls[i],
                "target": examples[i][2].strip(),
                "predicted": bundle.decode(scored[i].greedy_ids).strip(),
                "context": excerpt(examples[i][1], tail=True),
            }
            for i in order[: cfg.worst_n]
        ]
        mean_ll = sum(lls) / len(lls)
        return {
            "n": len(examples),
            "metrics": {
                "accuracy": sum(hits) / len(hits),
                "perplexity": metrics.perplexity(-sum(lls), len(lls)),
                "target_nll": -mean_ll,
            },
            "details": {
                "target_tokens": sum(len(p.continuation) for p in pairs),
                "truncated": truncated,
                "truncated_tokens": sum(p.truncated for p in pairs),
            },
            "notes": _truncation_notes(truncated, len(examples), bundle.max_length),
            "worst": worst,
        }


def _truncation_notes(truncated: int, n: int, max_length: int) -> list[str]:
    if not truncated:
        return []
    return [
        f"{truncated} of {n} examples were longer than the context ({max_length} tokens): their oldest "
        f"context tokens were dropped (left truncation)"
    ]


@register("lambada", "LAMBADA (OpenAI): last-word accuracy, target-word perplexity")
def _lambada(cfg: EvalConfig) -> Task:
    return LambadaTask(builtin_file(cfg, "lm-eval/lambada/lambada_test.jsonl", "lambada"))


# ---------------------------------------------------------------------------------------------------------
# Multiple choice by log-likelihood
# ---------------------------------------------------------------------------------------------------------


@dataclass
class ChoiceSpec:
    name: str
    data: Path
    context: str = "{context}"
    choices: str = "choices"
    gold: str = "gold"
    target_delimiter: str = " "
    source: Path | None = None  # the spec file

    KEYS = ("type", "name", "data", "context", "choices", "gold", "target_delimiter")


def load_spec(path: Path, data_override: str | None = None) -> ChoiceSpec:
    """A multiple-choice spec from YAML or JSON (see the module docstring)."""
    if not path.is_file():
        raise DataError(f"no such task spec: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML reads JSON too
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML/JSON ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: a task spec must be a mapping")
    for key in raw:
        if key not in ChoiceSpec.KEYS:
            hint = difflib.get_close_matches(str(key), ChoiceSpec.KEYS, n=1)
            raise DataError(
                f"{path}: unknown spec key '{key}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
            )
    kind = raw.get("type", "multiple_choice")
    if kind != "multiple_choice":
        raise DataError(f"{path}: spec type {kind!r} is not supported (multiple_choice)")
    data = data_override or raw.get("data")
    if not data:
        raise DataError(f"{path}: missing field 'data' (the .jsonl file of questions)")
    data_path = Path(data) if data_override or Path(data).is_absolute() else path.parent / data
    values = {k: str(raw[k]) for k in ("context", "choices", "gold", "target_delimiter") if k in raw}
    return ChoiceSpec(name=str(raw.get("name") or path.stem), data=data_path, source=path, **values)


@dataclass
class Question:
    where: str
    context: str
    choices: list[str]
    gold: int


@dataclass
class MultipleChoiceTask:
    spec: ChoiceSpec
    kind: str = "multiple_choice"
    needs_model: bool = True

    @property
    def name(self) -> str:
        return self.spec.name

    def inputs(self) -> list[Path]:
        return [p for p in (self.spec.source, self.spec.data) if p is not None]

    def questions(self) -> list[Question]:
        spec, path = self.spec, self.spec.data
        if not path.is_file():
            raise DataError(f"task '{spec.name}': no such file: {path}")
        out = []
        for lineno, record in read_jsonl(path):
            where = f"{path}:{lineno}"
            context = fill_template(spec.context, record, where)
            choices = field_of(record, spec.choices, path, lineno)
            if (
                not isinstance(choices, list)
                or len(choices) < 2
                or not all(isinstance(c, str) for c in choices)
            ):
                raise DataError(f"{where}: field '{spec.choices}' must be a list of at least two strings")
            gold = field_of(record, spec.gold, path, lineno)
            if isinstance(gold, str) and gold in choices:
                gold = choices.index(gold)
            elif isinstance(gold, str) and gold.isdigit():
                gold = int(gold)
            if isinstance(gold, bool) or not isinstance(gold, int) or not 0 <= gold < len(choices):
                raise DataError(
                    f"{where}: field '{spec.gold}' = {gold!r} is neither a choice index "
                    f"(0..{len(choices) - 1}) nor one of the choices"
                )
            out.append(Question(where, context, choices, gold))
        return out

    def run(self, bundle: ModelBundle | None, cfg: EvalConfig) -> dict[str, Any]:
        assert bundle is not None
        questions = take(self.questions(), cfg.limit, self.name, str(self.spec.data))
        delim = self.spec.target_delimiter
        pairs, owner = [], []
        for q, question in enumerate(questions):
            for choice in question.choices:
                pairs.append(
                    encode_pair(bundle, question.context, delim + choice, cfg.truncation, question.where)
                )
                owner.append(q)
        requests = [Request(p.context + p.continuation, len(p.continuation)) for p in pairs]
        with progress(len(questions), self.name) as bar:
            scored = score(
                bundle, requests, on_done=lambda i: bar.update(1 / len(questions[owner[i]].choices))
            )
        lls: list[list[float]] = [[] for _ in questions]
        for q, s in zip(owner, scored):
            lls[q].append(s.total)

        def argmax(xs: Sequence[float]) -> int:
            return max(range(len(xs)), key=lambda i: xs[i])

        picks = {"acc": [], "acc_norm": [], "acc_norm_bytes": []}
        for question, ll in zip(questions, lls):
            picks["acc"].append(argmax(ll))
            picks["acc_norm"].append(argmax([x / max(len(c), 1) for x, c in zip(ll, question.choices)]))
            picks["acc_norm_bytes"].append(
                argmax([x / max(len(c.encode()), 1) for x, c in zip(ll, question.choices)])
            )
        result = {
            k: sum(p == q.gold for p, q in zip(v, questions)) / len(questions) for k, v in picks.items()
        }
        wrong = [q for q, p in enumerate(picks["acc"]) if p != questions[q].gold]
        wrong.sort(key=lambda q: -(lls[q][picks["acc"][q]] - lls[q][questions[q].gold]))
        worst = [
            {
                "source": questions[q].where,
                "margin": lls[q][picks["acc"][q]] - lls[q][questions[q].gold],
                "gold": questions[q].choices[questions[q].gold],
                "predicted": questions[q].choices[picks["acc"][q]],
                "context": excerpt(questions[q].context, tail=True),
            }
            for q in wrong[: cfg.worst_n]
        ]
        truncated = len({owner[i] for i, p in enumerate(pairs) if p.truncated})
        return {
            "n": len(questions),
            "metrics": result,
            "details": {"choices": len(pairs), "truncated": truncated, "spec": str(self.spec.source or "")},
            "notes": _truncation_notes(truncated, len(questions), bundle.max_length),
            "worst": worst,
        }


def task_from_spec(path: Path, data: str | None = None) -> Task:
    return MultipleChoiceTask(load_spec(path, data))


@register("multiple_choice", "log-likelihood multiple choice from eval.multiple_choice.spec/.data")
def _multiple_choice(cfg: EvalConfig) -> Task:
    mc = cfg.multiple_choice
    if mc.spec:
        return task_from_spec(Path(mc.spec), mc.data)
    if mc.data:  # no spec: the records carry `context`, `choices`, `gold` themselves
        return MultipleChoiceTask(ChoiceSpec(name="multiple_choice", data=Path(mc.data)))
    raise ConfigError("task 'multiple_choice' needs eval.multiple_choice.spec or eval.multiple_choice.data")


# ---------------------------------------------------------------------------------------------------------
# Classification: metrics of predicted labels against gold labels
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Labelled:
    where: str
    text: str
    label: str


def read_labelled(path: Path, text_field: str, label_field: str) -> list[Labelled]:
    """Rows of a .jsonl, .csv or .tsv (header row) with a text and a label column."""
    rows = []
    if path.suffix == ".jsonl":
        for lineno, record in read_jsonl(path):
            text = field_of(record, text_field, path, lineno)
            label = field_of(record, label_field, path, lineno)
            rows.append(Labelled(f"{path}:{lineno}", str(text), str(label)))
        return rows
    if path.suffix not in (".csv", ".tsv"):
        raise DataError(f"{path}: classification data must be .jsonl, .csv or .tsv")
    with open(path, encoding="utf-8-sig", newline="") as f:
        tsv = path.suffix == ".tsv"
        reader = csv.reader(
            f, delimiter="\t" if tsv else ",", quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL
        )
        header = next(reader, None)
        if header is None:
            return []
        for key in (text_field, label_field):
            if key not in header:
                raise DataError(f"{path}:1: missing field '{key}' in the header ({', '.join(header)})")
        ti, li = header.index(text_field), header.index(label_field)
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path}:{reader.line_num}: {len(row)} columns, the header has {len(header)}")
            rows.append(Labelled(f"{path}:{reader.line_num}", row[ti], row[li].strip()))
    return rows


def read_predictions(path: Path) -> list[tuple[str, str]]:
    """(where, label) per line: .jsonl with a `prediction` field, or plain text, one label a line."""
    if path.suffix == ".jsonl":
        return [(f"{path}:{n}", str(field_of(r, "prediction", path, n))) for n, r in read_jsonl(path)]
    lines = path.read_text(encoding="utf-8").splitlines()
    return [(f"{path}:{n}", line.strip()) for n, line in enumerate(lines, 1) if line.strip()]


@dataclass
class ClassifyTask:
    data: Path
    predictions: Path | None = None
    predict: Predictor | None = None  # the seam for a classification head: texts -> labels
    labels: list[str] = field(default_factory=list)
    text_field: str = "text"
    label_field: str = "label"
    name: str = "classify"
    kind: str = "classify"
    needs_model: bool = False

    def inputs(self) -> list[Path]:
        return [p for p in (self.data, self.predictions) if p is not None]

    def run(self, bundle: ModelBundle | None, cfg: EvalConfig) -> dict[str, Any]:
        rows = read_labelled(self.data, self.text_field, self.label_field)
        if self.predictions is not None:
            preds = read_predictions(self.predictions)
            if len(preds) != len(rows):
                raise DataError(
                    f"{self.predictions}: {len(preds)} predictions for {len(rows)} examples in {self.data}"
                )
        rows = take(rows, cfg.limit, self.name, str(self.data))
        if self.predictions is not None:
            preds = preds[: len(rows)]
        elif self.predict is not None:
            with progress(len(rows), self.name) as bar:
                labels = self.predict([r.text for r in rows])
                bar.update(len(rows))
            if len(labels) != len(rows):
                raise DataError(
                    f"task '{self.name}': the classifier returned {len(labels)} labels for {len(rows)} texts"
                )
            preds = [(f"prediction {i + 1}", str(label)) for i, label in enumerate(labels)]
        else:
            raise ConfigError(
                f"task '{self.name}' needs eval.classify.predictions (a file of predicted labels); "
                "classifying with the model needs a classification head (lmforge finetune)"
            )
        known = list(self.labels) or sorted({r.label for r in rows})
        for r in rows:
            if r.label not in known:
                raise DataError(
                    f"{r.where}: label {r.label!r} is not one of the known classes ({', '.join(known)})"
                )
        for where, p in preds:
            if p not in known:
                raise DataError(
                    f"{where}: predicted label {p!r} is not one of the known classes ({', '.join(known)})"
                )
        y_true, y_pred = [r.label for r in rows], [p for _, p in preds]
        result = metrics.classification_metrics(y_true, y_pred, known)
        wrong = [i for i in range(len(rows)) if y_true[i] != y_pred[i]]
        worst = [
            {
                "source": rows[i].where,
                "gold": y_true[i],
                "predicted": y_pred[i],
                "text": excerpt(rows[i].text),
            }
            for i in wrong[: cfg.worst_n]
        ]
        per_class = result.pop("per_class")
        labels, cm = result.pop("labels"), result.pop("confusion_matrix")
        return {
            "n": len(rows),
            "metrics": result,
            "details": {
                "per_class": per_class,
                "labels": labels,
                "confusion_matrix": cm,
                "misclassified": len(wrong),
            },
            "notes": [],
            "worst": worst,
        }


def classify_task(cfg: EvalConfig, predict: Predictor | None = None) -> ClassifyTask:
    c = cfg.classify
    data = need_file(c.data, "eval.classify.data (a .jsonl/.csv/.tsv with text and label)", "classify")
    preds = need_file(c.predictions, "eval.classify.predictions", "classify") if c.predictions else None
    return ClassifyTask(data, preds, predict, list(c.labels), c.text_field, c.label_field)


@register("classify", "accuracy, P/R/F1 per class, macro/weighted, confusion matrix (eval.classify.*)")
def _classify(cfg: EvalConfig) -> Task:
    return classify_task(cfg)


# ---------------------------------------------------------------------------------------------------------
# Generation: translation on a prompt template, BLEU / chrF / exact match
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Pair:
    where: str
    source: str
    reference: str


TATOEBA_TEST_EVERY = 20  # Tatoeba has no split: pairs 0, 20, 40, ... (1,312 of 26,238) are the test set


def read_parallel(source: Path, reference: Path) -> list[Pair]:
    src = source.read_text(encoding="utf-8").splitlines()
    ref = reference.read_text(encoding="utf-8").splitlines()
    if len(src) != len(ref):
        raise DataError(f"{source} has {len(src)} lines but {reference} has {len(ref)}")
    return [Pair(f"{source.name}:{i}", s, r) for i, (s, r) in enumerate(zip(src, ref), 1)]


def read_tatoeba(path: Path, reverse: bool) -> list[Pair]:
    pairs = []
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, 1):
            if (lineno - 1) % TATOEBA_TEST_EVERY:
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 2:
                raise DataError(f"{path}:{lineno}: expected English<TAB>Chinese")
            en, zh = cols[0], cols[1]
            pairs.append(Pair(f"{path.name}:{lineno}", zh if reverse else en, en if reverse else zh))
    return pairs


def read_source_jsonl(path: Path) -> list[Pair]:
    return [
        Pair(f"{path.name}:{n}", str(field_of(r, "source", path, n)), str(field_of(r, "target", path, n)))
        for n, r in read_jsonl(path)
    ]


@dataclass
class TranslateTask:
    name: str
    load: Callable[[], list[Pair]]
    files: list[Path]
    template: str
    tokenize: str
    kind: str = "translate"
    needs_model: bool = True

    def inputs(self) -> list[Path]:
        return self.files

    def run(self, bundle: ModelBundle | None, cfg: EvalConfig) -> dict[str, Any]:
        from lmforge.infer.generate import SamplingParams, generate

        assert bundle is not None
        tc = cfg.translate
        if tc.max_new_tokens < 1 or tc.max_new_tokens >= bundle.max_length:
            raise ConfigError(
                f"eval.translate.max_new_tokens must be in [1, {bundle.max_length - 1}], "
                f"got {tc.max_new_tokens}"
            )
        pairs = take(self.load(), cfg.limit, self.name, ", ".join(map(str, self.files)))
        room = bundle.max_length - tc.max_new_tokens
        prompts, truncated = [], 0
        for pair in pairs:
            # Encoded with the tokenizer's own special tokens (a BOS, if it adds one), as `lmforge generate`.
            ids = bundle.tokenizer.encode(
                fill_template(self.template, {"source": pair.source}, pair.where)
            ).ids
            if len(ids) > room:
                if cfg.truncation == "error":
                    raise DataError(
                        f"{pair.where}: the prompt is {len(ids)} tokens; with "
                        f"max_new_tokens={tc.max_new_tokens} the context holds {room}"
                    )
                ids, truncated = ids[len(ids) - room :], truncated + 1
            prompts.append(ids)
        params = SamplingParams(max_new_tokens=tc.max_new_tokens, temperature=0.0, stop=list(tc.stop))
        hyps: list[str] = []
        with progress(len(prompts), self.name) as bar:
            for start in range(0, len(prompts), bundle.batch_size):
                batch = prompts[start : start + bundle.batch_size]
                done = generate(bundle.model, bundle.tokenizer, batch, params, eos_id=bundle.eos_id)
                hyps.extend(c.text.strip() for c in done)
                bar.update(len(batch))
        refs = [p.reference for p in pairs]
        bleu = metrics.bleu(hyps, refs, self.tokenize)
        chrf = metrics.chrf(hyps, refs)
        sentence = [metrics.sentence_bleu(h, r, self.tokenize) for h, r in zip(hyps, refs)]
        order = sorted(range(len(pairs)), key=lambda i: sentence[i])
        worst = [
            {
                "source": pairs[i].where,
                "sentence_bleu": sentence[i],
                "input": pairs[i].source,
                "reference": refs[i],
                "hypothesis": hyps[i],
            }
            for i in order[: cfg.worst_n]
        ]
        return {
            "n": len(pairs),
            "metrics": {
                "bleu": bleu["score"],
                "chrf": chrf["score"],
                "exact_match": metrics.exact_match(hyps, refs),
            },
            "details": {
                "bleu": bleu,
                "chrf_signature": chrf["signature"],
                "template": self.template,
                "tokenize": self.tokenize,
                "max_new_tokens": tc.max_new_tokens,
                "truncated": truncated,
                "examples": [
                    {"input": p.source, "reference": p.reference, "hypothesis": h}
                    for p, h in list(zip(pairs, hyps))[:3]
                ],
            },
            "notes": _truncation_notes(truncated, len(pairs), bundle.max_length),
            "worst": worst,
            "hypotheses": hyps,
        }


def _translate_task(
    cfg: EvalConfig,
    name: str,
    load: Callable[[], list[Pair]],
    files: list[Path],
    template: str,
    tokenize: str,
) -> Task:
    tc = cfg.translate
    template = tc.template or template
    if "{source}" not in template:
        raise ConfigError(f"eval.translate.template must contain {{source}}, got {template!r}")
    tokenize = tc.tokenize or tokenize
    if tokenize not in metrics.BLEU_TOKENIZERS:
        raise ConfigError(
            f"eval.translate.tokenize: unknown tokenizer {tokenize!r} "
            f"(one of {', '.join(metrics.BLEU_TOKENIZERS)})"
        )
    return TranslateTask(name, load, files, template, tokenize)


@register("translate", "BLEU/chrF/exact match of greedy outputs on eval.translate.source (+ .reference)")
def _translate(cfg: EvalConfig) -> Task:
    tc = cfg.translate
    source = need_file(
        tc.source, "eval.translate.source (.txt with eval.translate.reference, or .jsonl)", "translate"
    )
    if source.suffix == ".jsonl":
        return _translate_task(
            cfg,
            "translate",
            lambda: read_source_jsonl(source),
            [source],
            "Source: {source}\nTranslation:",
            "13a",
        )
    reference = need_file(
        tc.reference, "eval.translate.reference (line-aligned with the source)", "translate"
    )
    return _translate_task(
        cfg,
        "translate",
        lambda: read_parallel(source, reference),
        [source, reference],
        "Source: {source}\nTranslation:",
        "13a",
    )


@register("multi30k", "Multi30K test_2016_flickr English->German: BLEU (13a), chrF, exact match")
def _multi30k(cfg: EvalConfig) -> Task:
    en = builtin_file(cfg, "translation/multi30k/test_2016_flickr.en", "multi30k")
    de = builtin_file(cfg, "translation/multi30k/test_2016_flickr.de", "multi30k")
    return _translate_task(
        cfg, "multi30k", lambda: read_parallel(en, de), [en, de], "English: {source}\nGerman:", "13a"
    )


@register("tatoeba_en_zh", "Tatoeba English->Chinese (every 20th pair): BLEU (zh), chrF, exact match")
def _tatoeba_en_zh(cfg: EvalConfig) -> Task:
    path = builtin_file(cfg, "translation/tatoeba_cmn_eng/cmn.txt", "tatoeba_en_zh")
    return _translate_task(
        cfg,
        "tatoeba_en_zh",
        lambda: read_tatoeba(path, reverse=False),
        [path],
        "English: {source}\nChinese:",
        "zh",
    )


@register("tatoeba_zh_en", "Tatoeba Chinese->English (every 20th pair): BLEU (13a), chrF, exact match")
def _tatoeba_zh_en(cfg: EvalConfig) -> Task:
    path = builtin_file(cfg, "translation/tatoeba_cmn_eng/cmn.txt", "tatoeba_zh_en")
    return _translate_task(
        cfg,
        "tatoeba_zh_en",
        lambda: read_tatoeba(path, reverse=True),
        [path],
        "Chinese: {source}\nEnglish:",
        "13a",
    )

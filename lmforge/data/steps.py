"""The pipeline's building blocks: a document, a step, and the counts every step keeps.

A pipeline is a list of steps chained as generators (as in datatrove): each step takes an iterable of
documents and yields the ones it keeps, possibly changed. Documents stream through the whole chain one at
a time, so memory does not grow with the input (dedup keeps a small fingerprint per kept document).

Adding a filter means adding one small class:

    class NoDigits(Filter):
        name = "no_digits"
        def reject(self, doc: Doc) -> str | None:
            return "has_digits" if any(c.isdigit() for c in doc.text) else None
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

EXAMPLE_CHARS = 200  # removed examples are cut to this many characters in the report


@dataclass
class Doc:
    """One document: its text, where it came from (`file:line`), and fields carried to the output."""

    text: str
    source: str
    fields: dict[str, Any] = field(default_factory=dict)  # label, lang, instruction fields, ...
    # Fields holding text that cleaning steps must change together with `text` (instruction parts).
    text_fields: tuple[str, ...] = ()
    split: str | None = None

    def map_text(self, fn: Callable[[str], str]) -> None:
        """Apply a text transformation to the text and to every text-bearing field."""
        self.text = fn(self.text)
        for key in self.text_fields:
            value = self.fields.get(key)
            if isinstance(value, str):
                self.fields[key] = fn(value)

    def record(self) -> dict[str, Any]:
        return {"text": self.text, **self.fields, "source": self.source}


@dataclass
class StepStats:
    docs_in: int = 0
    chars_in: int = 0
    docs_out: int = 0
    chars_out: int = 0
    removed_by: Counter[str] = field(default_factory=Counter)  # reason -> documents removed
    counters: Counter[str] = field(default_factory=Counter)  # anything else worth counting
    examples: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "docs_in": self.docs_in,
            "chars_in": self.chars_in,
            "docs_out": self.docs_out,
            "chars_out": self.chars_out,
            "removed": sum(self.removed_by.values()),
            "removed_by": dict(self.removed_by.most_common()),
            "counters": dict(self.counters),
            "examples": self.examples,
        }


def excerpt(text: str, limit: int = EXAMPLE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


class Step:
    """A pipeline step. Subclasses override `process` (one document in, one or none out) or `__call__`."""

    name = "step"

    def __init__(self, max_examples: int = 3) -> None:
        self.stats = StepStats()
        self.max_examples = max_examples

    def __call__(self, docs: Iterable[Doc]) -> Iterator[Doc]:
        for doc in docs:
            self.count_in(doc)
            out = self.process(doc)
            if out is not None:
                self.count_out(out)
                yield out

    def process(self, doc: Doc) -> Doc | None:
        return doc

    def count_in(self, doc: Doc) -> None:
        self.stats.docs_in += 1
        self.stats.chars_in += len(doc.text)

    def count_out(self, doc: Doc) -> None:
        self.stats.docs_out += 1
        self.stats.chars_out += len(doc.text)

    def removed(self, doc: Doc, reason: str, detail: str | None = None) -> None:
        """Count a dropped document under `reason` and keep the first few as examples."""
        self.stats.removed_by[reason] += 1
        self.example(doc, reason, detail)

    def example(self, doc: Doc, reason: str, detail: str | None = None) -> None:
        if len(self.stats.examples) < self.max_examples:
            entry = {"reason": reason, "source": doc.source, "text": excerpt(doc.text)}
            if detail:
                entry["detail"] = detail
            self.stats.examples.append(entry)


class Filter(Step):
    """A step that keeps or drops whole documents; `reject` says why a document goes, or None."""

    def reject(self, doc: Doc) -> str | tuple[str, str] | None:
        raise NotImplementedError

    def process(self, doc: Doc) -> Doc | None:
        verdict = self.reject(doc)
        if verdict is None:
            return doc
        reason, detail = verdict if isinstance(verdict, tuple) else (verdict, None)
        self.removed(doc, reason, detail)
        return None


class Mapper(Step):
    """A step that changes text in place and never drops a document."""

    def transform(self, text: str) -> str:
        raise NotImplementedError

    def process(self, doc: Doc) -> Doc | None:
        before = doc.text
        doc.map_text(self.transform)
        if doc.text != before:
            self.stats.counters["docs_changed"] += 1
        return doc


def run_steps(docs: Iterable[Doc], steps: list[Step]) -> Iterator[Doc]:
    """Chain the steps lazily: nothing is read until the result is iterated."""
    stream: Iterable[Doc] = docs
    for step in steps:
        stream = step(stream)
    yield from stream

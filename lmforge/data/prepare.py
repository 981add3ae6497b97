"""`lmforge prepare`: raw files -> cleaned, deduplicated, split documents + report.json.

    read -> normalize -> language -> quality -> pii -> exact_dedup -> near_dedup -> split -> write

Every step is optional (data.<section>.enabled / data.dedup.exact / data.dedup.near) except reading and
splitting; the chain streams, so memory does not grow with the size of the input. Outputs are written to
temporary names and renamed only when the whole run succeeded.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from lmforge.config import Config
from lmforge.data.clean import LanguageFilter, Normalize, PiiMasker, QualityFilter
from lmforge.data.dedup import ExactDedup, NearDedup
from lmforge.data.documents import SPLITS, JsonlZstWriter, split_path
from lmforge.data.sources import BadRecords, Reader, resolve_inputs
from lmforge.data.split import Splitter
from lmforge.data.steps import Step, run_steps
from lmforge.errors import DataError
from lmforge.runs import atomic_path, atomic_write_json, start_run

log = logging.getLogger("lmforge")


def build_steps(cfg: Config) -> list[Step]:
    """The pipeline after the reader, in order; the last step is always the splitter."""
    d = cfg.data
    n = d.examples_per_step
    steps: list[Step] = []
    if d.normalize.enabled:
        steps.append(Normalize(d.normalize, n))
    if d.language.enabled:
        steps.append(LanguageFilter(d.language, n))
    if d.quality.enabled:
        steps.append(QualityFilter(d.quality, n))
    if d.pii.enabled:
        steps.append(PiiMasker(d.pii, n))
    if d.dedup.exact:
        steps.append(ExactDedup(n))
    if d.dedup.near:
        steps.append(NearDedup(d.dedup, n))
    steps.append(Splitter(d.split, cfg.run.seed, n))
    return steps


def run_prepare(cfg: Config, out: str | None = None) -> dict[str, Any]:
    """Run the whole prepare stage; returns the report (also written to report.json)."""
    files = resolve_inputs(cfg.data.inputs)  # before the run directory exists: a typo creates nothing
    steps = build_steps(cfg)  # checks the config too
    splitter = steps[-1]
    assert isinstance(splitter, Splitter)
    bad = BadRecords(cfg.run.on_error)
    reader = Reader(cfg.data.reader, bad)
    started = time.perf_counter()

    with start_run("prepare", cfg, out) as run:
        run.add_inputs(files)
        # Outputs of an earlier run in this directory must not survive as if this run had made them.
        for name in [*(split_path(run.dir, s).name for s in SPLITS), "report.json"]:
            run.path(name).unlink(missing_ok=True)

        with contextlib.ExitStack() as stack:
            writers = {}
            for split in splitter.splits:
                tmp = stack.enter_context(atomic_path(split_path(run.dir, split)))
                writers[split] = stack.enter_context(JsonlZstWriter(tmp))
            for doc in run_steps(reader(files), steps):
                writers[doc.split].write(doc.record())  # type: ignore[index]
            if sum(w.records for w in writers.values()) == 0:
                # Raised inside the stack: the temporary files are removed, nothing is renamed.
                raise DataError(_nothing_left(reader, steps, bad))

        seconds = time.perf_counter() - started
        report = _report(files, reader, steps, bad, writers, seconds)
        atomic_write_json(run.path("report.json"), report)
        for split in splitter.splits:
            run.add_output(split_path(run.dir, split))
        run.add_output(run.path("report.json"))
        run.extra["prepare"] = {
            "docs_in": report["docs_in"], "docs_out": report["docs_out"],
            "chars_in": report["chars_in"], "chars_out": report["chars_out"],
            "skipped": report["skipped"], "splits": report["splits"],
        }
        print(format_report(report))
        log.info("prepared %d documents into %s", report["docs_out"], run.dir)
    return report


def _nothing_left(reader: Reader, steps: list[Step], bad: BadRecords) -> str:
    if reader.stats.docs_out == 0:
        skipped = f" ({sum(bad.counts.values())} bad records skipped)" if bad.counts else ""
        return f"no documents read from the inputs{skipped}"
    culprits = []
    for step in steps:
        for reason, count in step.stats.removed_by.most_common(2):
            culprits.append(f"{step.name}/{reason}: {count}")
    return (f"all {reader.stats.docs_out} documents were removed by the filters ({', '.join(culprits)}); "
            "loosen the thresholds in data.quality / data.language.keep, or check data.reader.text_field")


def _report(files: list[Path], reader: Reader, steps: list[Step], bad: BadRecords,
            writers: dict[str, JsonlZstWriter], seconds: float) -> dict[str, Any]:
    read = {"name": reader.name, **reader.stats.as_dict()}
    nbytes = reader.stats.counters["bytes"]
    splits = {s: {"docs": w.records, "chars": w.chars} for s, w in writers.items()}
    return {
        "inputs": [str(f) for f in files],
        "bytes_in": nbytes,
        "docs_in": reader.stats.docs_out,
        "chars_in": reader.stats.chars_out,
        "docs_out": sum(s["docs"] for s in splits.values()),
        "chars_out": sum(s["chars"] for s in splits.values()),
        "skipped": dict(bad.counts),
        "skipped_examples": bad.messages,
        "steps": [read, *({"name": s.name, **s.stats.as_dict()} for s in steps)],
        "splits": splits,
        "seconds": round(seconds, 3),
        "mb_per_s": round(nbytes / 1e6 / seconds, 3) if seconds > 0 else None,
    }


def format_report(report: dict[str, Any]) -> str:
    """The table printed at the end of a run, and a few examples of what each step removed."""
    head = ("step", "docs in", "chars in", "docs out", "chars out", "removed", "main reasons")
    rows = []
    for step in report["steps"]:
        first = step["name"] == "read"
        reasons = ", ".join(f"{k} {v}" for k, v in list(step["removed_by"].items())[:3])
        if step["name"] == "pii" and step["counters"]:
            reasons = "masked " + ", ".join(f"{k} {step['counters'][k]}" for k in ("email", "phone", "ip")
                                            if k in step["counters"])
        if step["name"] == "language":
            langs = {k[5:]: v for k, v in step["counters"].items() if k.startswith("lang_")}
            reasons = ", ".join(filter(None, [reasons, "tagged " + ", ".join(f"{k} {v}" for k, v in langs.items())]))
        rows.append((
            step["name"],
            "-" if first else f"{step['docs_in']:,}",
            "-" if first else f"{step['chars_in']:,}",
            f"{step['docs_out']:,}",
            f"{step['chars_out']:,}",
            "-" if first else f"{step['removed']:,}",
            reasons,
        ))
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) if i in (0, 6) else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(head), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)]
    split_text = ", ".join(f"{s} {v['docs']:,} docs / {v['chars']:,} chars" for s, v in report["splits"].items())
    out.append(f"splits: {split_text}")
    if report["skipped"]:
        out.append("skipped bad records: " + ", ".join(f"{k} {v}" for k, v in report["skipped"].items()))
    for step in report["steps"]:
        if step["examples"] and step["removed"]:
            out.append(f"removed by {step['name']}:")
            for ex in step["examples"]:
                detail = f" ({ex['detail']})" if ex.get("detail") else ""
                text = ex["text"].replace("\n", "⏎")[:100]
                out.append(f"  [{ex['reason']}{detail}] {ex['source']}: {text!r}")
    return "\n".join(out)

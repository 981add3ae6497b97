"""The pipeline's `pair` stage: two line-aligned files (a source and a target language) as instruction
records, `records.jsonl` ({instruction, input, output} by default, `pipeline.pair.*`), which `prepare`
(as text) and `finetune --task sft` (as conversations) read. Multi30K's train.en / train.de are such a pair.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from lmforge.config import Config
from lmforge.errors import DataError
from lmforge.runs import atomic_path, start_run

log = logging.getLogger("lmforge")
RECORDS = "records.jsonl"


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def run_pair(cfg: Config, source: str, target: str, out: Path) -> Path:
    pc = cfg.pipeline.pair
    src, tgt = Path(source), Path(target)
    for p in (src, tgt):
        if not p.is_file():
            raise DataError(f"pair: {p} is not a file (two line-aligned text files are expected)")
    sources, targets = _lines(src), _lines(tgt)
    if len(sources) != len(targets):
        raise DataError(f"pair: {src} has {len(sources):,} lines but {tgt} has {len(targets):,}; they must align")
    pairs = [(s.strip(), t.strip()) for s, t in zip(sources, targets) if s.strip() and t.strip()]
    if pc.max_records is not None:
        pairs = pairs[: pc.max_records]
    with start_run("pair", cfg, out) as run:
        run.add_inputs([src, tgt])
        with atomic_path(run.path(RECORDS)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for s, t in pairs:
                record = {pc.instruction_field: pc.instruction, pc.source_field: s, pc.target_field: t}
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        run.add_output(run.path(RECORDS))
        run.extra["pair"] = {"records": len(pairs), "skipped_empty": len(sources) - len(pairs)
                             if pc.max_records is None else None}  # fmt: skip
    log.info("pair: %s records from %s + %s -> %s", f"{len(pairs):,}", src.name, tgt.name, run.path(RECORDS))
    return run.path(RECORDS)


def pipeline_stage(cfg: Config, inputs: dict[str, list[str]], out: Path, config_file: Path) -> None:
    run_pair(cfg, inputs["source"][0], inputs["target"][0], out)

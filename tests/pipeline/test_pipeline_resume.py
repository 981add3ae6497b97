"""A pipeline killed (SIGKILL) during pretraining resumes at that stage, from its last checkpoint, and ends
with the same weights as a run that was never interrupted."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from pipeline_helpers import (
    PRETRAIN_STAGES,
    final_weights,
    full_stages,
    lmforge_process,
    manifest,
    run_cli,
    stage_status,
    weights_digest,
    write_pipeline,
)


def test_killed_pipeline_resumes_to_the_same_final_checkpoint(done_pipeline: dict, sources: dict[str, Path],
                                                               tmp_path: Path) -> None:  # fmt: skip
    # The session's pipeline ran these same first stages, uninterrupted.
    expected = weights_digest(final_weights(done_pipeline["out"] / "pretrain"))
    stages = full_stages(sources)[:PRETRAIN_STAGES]

    # Killed once the first pretraining checkpoint is on disk, then run again.
    out = tmp_path / "killed"
    killed = write_pipeline(tmp_path / "killed.yaml", sources, out, stages, sample_prompt=None)
    proc = lmforge_process(["pipeline", str(killed)], cwd=tmp_path)
    checkpoints = out / "pretrain" / "checkpoints"
    deadline = time.monotonic() + 90
    while not any(checkpoints.glob("step-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert manifest(out / "prepare")["status"] == "finished"
    assert not (out / "pretrain" / "manifest.json").exists(), "the pipeline finished before it could be killed"
    assert manifest(out)["status"] == "running"  # the pipeline's own manifest says it did not finish
    done_steps = sorted(p.name for p in checkpoints.glob("step-*"))
    assert done_steps and done_steps[-1] < "step-0000150"

    code, _, err = run_cli(["pipeline", str(killed)])
    assert code == 0, err
    assert stage_status(out) == {"prepare": "cached", "tokenizer": "cached", "encode": "cached",
                                 "pretrain": "resumed"}  # fmt: skip
    assert "resuming from" in err and "step-00000" in err
    assert weights_digest(final_weights(out / "pretrain")) == expected
    assert manifest(out)["status"] == "finished"

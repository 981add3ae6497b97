"""`lmforge pipeline`, `lmforge lineage`, `lmforge sweep`: the stages chained, traced and tuned.

- spec.py     reads a pipeline file (an lmforge config with a `pipeline:` section) and checks it whole:
              stage kinds and names, inputs (earlier stages or paths), each stage's config overrides.
- stages.py   the stage registry: each kind is one entry naming its CLI verb, its inputs and what it makes.
- cache.py    content hashes (memoised), cache keys, and the check that a finished stage is still valid.
- runner.py   runs the stages in order through the CLI's own entry points; skips cached stages, resumes
              an interrupted one, writes the pipeline's manifest.
- summary.py  the table printed at the end (data kept, tokens, losses, metrics, sizes, paths) and a sample.
- serve_check.py  the `serve` stage: start the server on a loopback port, one completion, stop it.
- lineage.py  follows manifests from an artifact back to the raw files it came from.
- sweep.py    Optuna search over config keys, one training process per trial.
"""

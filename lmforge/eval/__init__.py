"""Evaluation: metrics (`metrics`), the task registry (`tasks`), model scoring (`scoring`), the report
(`report`) and the `lmforge evaluate` entry point (`evaluate.run_evaluate`)."""

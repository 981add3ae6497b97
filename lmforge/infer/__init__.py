"""Inference: loading any model we can run (`load`), sampling and streaming (`generate`)."""

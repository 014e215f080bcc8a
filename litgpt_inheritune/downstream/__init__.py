"""Downstream evaluation with lm-eval: offline tasks and the papers' suite (``tasks``), and the run (``evaluate``)."""

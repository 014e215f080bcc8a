"""The real-model demo (``python -m litgpt_inheritune.demo``): SmolLM2-135M-Instruct as reference (``smollm2``),
Python's reference prose as data, on CPU (``run``)."""

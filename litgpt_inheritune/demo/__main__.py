"""``python -m litgpt_inheritune.demo``: the real-model demo (see ``run.main`` for its options)."""

from jsonargparse import CLI

from litgpt_inheritune.demo.run import main

CLI(main)

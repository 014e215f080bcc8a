#!/usr/bin/env bash
# Inheritune vs random init (1x and 2x tokens) vs block-influence selection, 10 of SmolLM2-135M's 30 blocks, 3 seeds,
# same data and budget, a held-out test split, CPU (about 4 hours on 2 cores).
# Usage (from the repository root, after README's set-up): bash recipes/smollm2_arms/run.sh
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=out/smollm2_arms  # the paths in config_hub/smollm2_arms.yaml
python -m litgpt_inheritune.demo.smollm2 checkpoints/SmolLM2-135M-Instruct
python -c "from pathlib import Path; from litgpt_inheritune.demo.run import write_pydoc_text; write_pydoc_text(Path('$OUT/data'))"
litgpt inheritune_analyze checkpoints/SmolLM2-135M-Instruct --data "$OUT/data/train" --out_dir "$OUT/analysis" \
  --n_sequences 50 --seq_len 100 --overwrite true
litgpt inheritune_arms --config config_hub/smollm2_arms.yaml --test_data "$OUT/data/test"
cp "$OUT/arms.md" "$OUT/curves.png" "$OUT/analysis/analysis.md" "$OUT/analysis/analysis.png" recipes/smollm2_arms/

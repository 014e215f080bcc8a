#!/usr/bin/env bash
# The first paper's sweep over the child's depth: n in {4, 6, 8, 10, 13, 16, 18, 20} of OpenLLaMA-3B's 26 blocks,
# each trained with config_hub/openllama3b_1b.yaml's settings on the same 1B-token subset, then evaluated.
# Run recipes/openllama3b_1b/README.md's steps 1-2 first. About 8 x the cost of one child, scaled by n/13.
set -euo pipefail
for n in 4 6 8 10 13 16 18 20; do
  litgpt inheritune --config config_hub/openllama3b_1b.yaml --n_layers "$n" --out_dir "out/openllama3b_nsweep/n$n" --resume auto
  litgpt inheritune_evaluate "out/openllama3b_nsweep/n$n/final" --suite inheritune --out_dir "out/openllama3b_nsweep/n$n/evaluate"
done
litgpt inheritune_collect "{$(for n in 4 6 8 10 13 16 18 20; do printf 'n%s: out/openllama3b_nsweep/n%s/evaluate, ' "$n" "$n"; done)}" \
  --out out/openllama3b_nsweep/table.md

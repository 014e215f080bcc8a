#!/usr/bin/env bash
# Same target size, four ways, same continued-training budget, on CPU with SmolLM2-135M-Instruct's real weights:
#   blocks     - Inheritune: the first 11 of 30 blocks at full width (67.3M parameters)
#   width      - one-shot width inheritance (`litgpt inheritune_width`): 24 blocks, n_embd 448, 6 heads in 2 groups,
#                MLP 1024 (66.1M), kept by Minitron activation importance on the training text
#   prune_cpt  - Sheared-LLaMA learned pruning (`litgpt inheritune_prune`) to that same shape, 100 steps
#   random     - random init of that same shape
# Each then trains with `litgpt inheritune --config config_hub/smollm2_shape.yaml` (60 steps x 4 x 64 tokens).
# The rule for the learning rate, fixed before any run: per arm, of LRS the one whose seed-0 run has the lowest
# best validation loss (best/best.json; the test split is never looked at); the other SEEDS then run at that rate.
# compare.py reports mean ± std over seeds of best validation and test loss (each run's best/ checkpoint).
# Usage (from the repository root, after README's set-up): bash recipes/shape/run.sh   (about 1 h on 2 cores)
# Finished runs are skipped on a rerun.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=out/shape  # the paths in config_hub/smollm2_shape.yaml
REF=checkpoints/SmolLM2-135M-Instruct
TARGET='{n_layer: 24, n_embd: 448, n_head: 6, n_query_groups: 2, intermediate_size: 1024}'
SEEDS=(0 1 2)
LRS=(0.0003 0.001)
python -m litgpt_inheritune.demo.smollm2 "$REF"
if [ ! -d "$OUT/data/test" ]; then
  rm -rf "$OUT/data"
  python -c "from pathlib import Path; from litgpt_inheritune.demo.run import write_pydoc_text; write_pydoc_text(Path('$OUT/data'))"
fi
mkdir -p "$OUT/calib" && cp "$OUT"/data/train/*.txt "$OUT/calib/"  # raw text for calibration (TextFiles adds train/train)
[ -f "$OUT/width_child/lit_model.pth" ] || litgpt inheritune_width "$REF" --target "$TARGET" --data "$OUT/calib" \
  --out_dir "$OUT/width_child" --n_sequences 64 --seq_len 256
[ -f "$OUT/prune/final/lit_model.pth" ] || litgpt inheritune_prune "$REF" --target "$TARGET" \
  --data TextFiles --data.train_data_path "$OUT/data/train" --data.val_data_path "$OUT/data/val" --data.num_workers 0 \
  --out_dir "$OUT/prune" --steps 100 --lagrangian_warmup_steps 20 --train.micro_batch_size 4 \
  --train.global_batch_size 4 --train.max_seq_length 64 --train.lr_warmup_steps 10 --train.save_interval 20 \
  --train.log_interval 10 --eval.interval 20 --eval.max_iters 12 --lr 3e-4 --precision 32-true
RUNS=$OUT/runs
mkdir -p "$RUNS"
for lr in "${LRS[@]}"; do  # the YAML with its optimizer's lr replaced (jsonargparse cannot override one key of it)
  sed "s/^    lr: 0.001$/    lr: $lr/" config_hub/smollm2_shape.yaml > "$RUNS/config_lr$lr.yaml"
done
run () {  # arm, lr, seed, child dir, depth, extra args
  [ -f "$RUNS/$1/lr$2/seed$3/final/lit_model.pth" ] || litgpt inheritune --config "$RUNS/config_lr$2.yaml" \
    "$4" --n_layers "$5" --seed "$3" --out_dir "$RUNS/$1/lr$2/seed$3" "${@:6}"
}
arm () {  # arm, child dir, depth, extra args: the lr sweep on the first seed, then the other seeds at the chosen lr
  for lr in "${LRS[@]}"; do run "$1" "$lr" "${SEEDS[0]}" "${@:2}"; done
  chosen=$(python recipes/shape/compare.py --choose "$RUNS/$1" "${SEEDS[0]}")
  echo "$1: lr $chosen (lowest best validation loss on seed ${SEEDS[0]})"
  for seed in "${SEEDS[@]:1}"; do run "$1" "$chosen" "$seed" "${@:2}"; done
}
arm blocks "$REF" 11
arm width "$OUT/width_child" 24
arm prune_cpt "$OUT/prune/final" 24
arm random "$OUT/width_child" 24 --parts '[]'
python recipes/shape/compare.py "$OUT" "$RUNS" recipes/shape

#!/usr/bin/env bash
# Same target size, four ways, same continued-training budget, on CPU with SmolLM2-135M-Instruct's real weights:
#   blocks  - Inheritune: the first 11 of 30 blocks at full width (67.3M parameters)
#   width   - one-shot width inheritance (`litgpt inheritune_width`): 24 blocks, n_embd 448, 6 heads in 2 groups,
#             MLP 1024 (66.1M), kept by Minitron activation importance on the training text
#   prune   - Sheared-LLaMA learned pruning (`litgpt inheritune_prune`) to that same shape, 100 steps
#   random  - random init of that same shape
# Each then trains with `litgpt inheritune --config config_hub/smollm2_shape.yaml` (150 steps x 4 x 64 tokens).
# Usage (from the repository root, after README's set-up): bash recipes/shape/run.sh   (about an hour on 2 cores)
# Finished steps are skipped on a rerun.
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
OUT=out/shape  # the paths in config_hub/smollm2_shape.yaml
REF=checkpoints/SmolLM2-135M-Instruct
TARGET='{n_layer: 24, n_embd: 448, n_head: 6, n_query_groups: 2, intermediate_size: 1024}'
python -m litgpt_inheritune.demo.smollm2 "$REF"
if [ ! -d "$OUT/data/train" ]; then
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
# LR=3e-4 bash recipes/shape/run.sh repeats the four trainings at another learning rate (runs in out/shape/lr3e-4/).
LR=${LR:-0.001}
RUNS=$OUT; [ "$LR" = 0.001 ] || RUNS=$OUT/lr$LR
mkdir -p "$RUNS"
# The YAML with its optimizer's lr replaced (jsonargparse cannot override one key of a YAML's optimizer dict).
sed "s/^    lr: 0.001$/    lr: $LR/" config_hub/smollm2_shape.yaml > "$RUNS/config.yaml"
run () {  # arm, child dir, depth, extra args
  [ -f "$RUNS/$1/final/lit_model.pth" ] || litgpt inheritune --config "$RUNS/config.yaml" \
    "$2" --n_layers "$3" --out_dir "$RUNS/$1" "${@:4}"
}
run blocks "$REF" 11
run width "$OUT/width_child" 24
run prune_cpt "$OUT/prune/final" 24
run random "$OUT/width_child" 24 --parts '[]'
python recipes/shape/compare.py "$OUT" "$RUNS" recipes/shape "$LR"

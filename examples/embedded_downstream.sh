#!/usr/bin/env bash
# Joint downstream adaptation on the embedded default: the MNIST stand-in base ViT (28 x 28, from
# examples/embedded_default.sh) gets a new head for scikit-learn's 8 x 8 digits (embedded:digits), trained with
# LoRA at sigma = 0.25 for 10 epochs, then 90 held-out digits (every 4th) are certified with n = 6,000. Twice:
# in the digits' native 8 x 8 space (the default: noise added at 8 x 8, upsampled inside the model) and in the
# model's 28 x 28 space (--certify_size model: the digits upsampled first, noise added at 28 x 28), whose radii
# are l2 distances between 28 x 28 images and so about 3.5 times larger for the same robustness.
# Usage: bash examples/embedded_downstream.sh [folder holding base-vit, default runs/embedded]
set -euo pipefail
OUT=${1:-runs/embedded}
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
COMMON="--report_to none --save_strategy no --logging_steps 50 --dataloader_num_workers 0"
LAUNCH="accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no"

for SPACE in native model; do
  RUN="$OUT/digits-lora-0.25-$SPACE"
  echo "== digits, LoRA with a new head, certify_size $SPACE =="
  $LAUNCH examples/train.py --model_name_or_path "$OUT/base-vit" --dataset_name embedded:digits --new_head true \
    --method lora --sigma 0.25 --certify_size $SPACE --output_dir "$RUN" --num_train_epochs 10 \
    --per_device_train_batch_size 64 --per_device_eval_batch_size 250 --learning_rate 3e-3 --warmup_steps 20 \
    --lr_scheduler_type cosine $COMMON
  $LAUNCH examples/certify.py --model_name_or_path "$RUN" --dataset_name embedded:digits \
    --n0 100 --n 6000 --alpha 0.001 --batch_size 128 --skip 4 --output_dir "$RUN/certify"
done

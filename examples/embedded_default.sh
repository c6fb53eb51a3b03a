#!/usr/bin/env bash
# The main job, offline, on the embedded default (DESIGN.md "The embedded default"):
#   1. train the stand-in base ViT on clean embedded:mnist (saved as an ordinary model folder),
#   2. PEFT-smooth it with LoRA at sigma = 0.25 (accelerate launch examples/train.py),
#   3. certify held-out digits and print certified accuracy at radii 0, 0.25, 0.5, 0.75.
# n = 6000: the largest radius certifiable at alpha = 0.001, sigma * Phi^-1(alpha^(1/n)), is then 0.763 > 0.75
# (n = 5000 gives 0.748). Usage: bash examples/embedded_default.sh [output folder, default runs/embedded]
set -euo pipefail
OUT=${1:-runs/embedded}
SIGMA=0.25
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
COMMON="--report_to none --save_strategy no --logging_steps 50 --dataloader_num_workers 0"

echo "== 1/3 stand-in base: ViT on clean embedded:mnist =="
python examples/train_base.py --model_type vit --dataset_name embedded:mnist --output_dir "$OUT/base-vit" \
  --num_train_epochs 30 --per_device_train_batch_size 32 --per_device_eval_batch_size 250 --learning_rate 1e-3 \
  --weight_decay 0.05 --warmup_steps 300 --lr_scheduler_type cosine --max_grad_norm 0 --eval_strategy no $COMMON

echo "== 2/3 PEFTSmoothing: LoRA at sigma=$SIGMA =="
accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  examples/train.py --model_name_or_path "$OUT/base-vit" --dataset_name embedded:mnist --method lora \
  --sigma $SIGMA --output_dir "$OUT/vit-lora-$SIGMA" --num_train_epochs 4 --per_device_train_batch_size 64 \
  --per_device_eval_batch_size 250 --learning_rate 3e-3 --warmup_steps 20 --lr_scheduler_type cosine $COMMON

echo "== 3/3 certify held-out digits =="
accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no \
  examples/certify.py --model_name_or_path "$OUT/vit-lora-$SIGMA" --dataset_name embedded:mnist \
  --n0 100 --n 6000 --alpha 0.001 --batch_size 128 --skip 10 --output_dir "$OUT/vit-lora-$SIGMA/certify"

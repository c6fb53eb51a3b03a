#!/usr/bin/env bash
# The denoiser baselines on the embedded default, offline, on the stand-in base ViT of embedded_default.sh:
#   1. DnCNN trained with the MSE objective, 2. DnCNN trained with the stability objective,
#   3. a small DDPM trained on the clean training digits, used for one-shot (diffusion) denoising,
#   4. each composite denoiser -> frozen base certified like embedded_default.sh certifies LoRA.
# Diffusion certification is slow on a CPU (a UNet forward pass per noise sample): it certifies every
# DIFFUSION_SKIP-th validation image. Usage:
#   bash examples/embedded_baselines.sh [base folder, default runs/embedded/base-vit] [output, default runs/baselines]
set -euo pipefail
BASE=${1:-runs/embedded/base-vit}
OUT=${2:-runs/baselines}
SIGMA=${SIGMA:-0.25}
SKIP=${SKIP:-10}
DIFFUSION_SKIP=${DIFFUSION_SKIP:-50}
DNCNN=${DNCNN:-'{"depth": 6, "width": 16}'}
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
COMMON="--report_to none --save_strategy no --logging_steps 50 --dataloader_num_workers 0 --disable_tqdm true"
CERTIFY="--dataset_name embedded:mnist --n0 100 --n 6000 --alpha 0.001 --batch_size 128"

for OBJECTIVE in mse stability; do
  echo "== DnCNN, $OBJECTIVE objective, sigma=$SIGMA =="
  python examples/train_denoiser.py --model_name_or_path "$BASE" --dataset_name embedded:mnist --denoiser dncnn \
    --objective $OBJECTIVE --denoiser_options "$DNCNN" --sigma $SIGMA --output_dir "$OUT/dncnn-$OBJECTIVE-$SIGMA" \
    --num_train_epochs 3 --per_device_train_batch_size 64 --per_device_eval_batch_size 250 --learning_rate 2e-3 \
    --warmup_steps 20 --lr_scheduler_type cosine $COMMON
done

echo "== DDPM on the clean training digits =="
python examples/train_ddpm.py --model_name_or_path "$BASE" --dataset_name embedded:mnist --output_dir "$OUT/ddpm-mnist" \
  --width 16 --batch_size 32 --max_steps ${DDPM_STEPS:-6000} --max_sigma 0.5 --eval_sigmas 0.25,0.5

echo "== diffusion denoised smoothing, sigma=$SIGMA =="
python examples/train_denoiser.py --model_name_or_path "$BASE" --dataset_name embedded:mnist --denoiser diffusion \
  --diffusion_model "$OUT/ddpm-mnist" --sigma $SIGMA --output_dir "$OUT/diffusion-$SIGMA" \
  --per_device_eval_batch_size 250 $COMMON

for NAME in dncnn-mse dncnn-stability; do
  echo "== certify $NAME =="
  python examples/certify.py --model_name_or_path "$OUT/$NAME-$SIGMA" $CERTIFY --skip $SKIP --output_dir "$OUT/$NAME-$SIGMA/certify"
done
echo "== certify diffusion (every ${DIFFUSION_SKIP}th image) =="
python examples/certify.py --model_name_or_path "$OUT/diffusion-$SIGMA" $CERTIFY --skip $DIFFUSION_SKIP \
  --output_dir "$OUT/diffusion-$SIGMA/certify"

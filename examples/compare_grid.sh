#!/usr/bin/env bash
# The comparison grid of the embedded default (issue 8): every method on a ViT and on a ResNet stand-in base,
# at sigma = 0.25 and 0.5, in one table per configuration, offline:
#   1. the stand-in bases (embedded_default.sh's ViT; a 0.3M-parameter ResNet), a small DDPM on the clean
#      training digits, and one black-box coordinator per configuration (its encoder pretrained once);
#   2. examples/compare.py per configuration: base, full and LoRA (3 seeds each for full and LoRA), linear,
#      DoRA, adapter and VPT (ViT only: they need a transformer), consistency (LoRA), LoRA and full fine-tuning with
#      each training objective (full-consistency, lora-/full-smoothadv, lora-/full-macer; 3 seeds each; options
#      and m: comparison.DEFAULT_OBJECTIVE_OPTIONS / DEFAULT_NOISE_SAMPLES), DnCNN (MSE, stability, stability through the other base as the
#      surrogate), diffusion, and the coordinator; 50 held-out digits (every 20th), n0 = 100, alpha = 0.001,
#      n = 6,000 at sigma = 0.25 (ceiling sigma * Phi^-1(alpha^(1/n)) = 0.76) and n = 2,000 at sigma = 0.5
#      (ceiling 1.35);
#   3. the tables and plots copied to benchmarks/results/comparison/<configuration>/.
# Every step reuses what is already there, so an interrupted grid resumes. Hours on 2 CPU cores. LANES=k runs
# the configurations in k parallel lanes (round robin over CONFIGS), one thread per process unless OMP_NUM_THREADS
# says otherwise: on 2 cores LANES=2 is the fastest setting. The bases, the DDPM and the first configuration's
# coordinator (which pretrains the shared encoder) are built first, in one lane, so lanes change no weights
# (at a given thread count).
# Usage: [LANES=2] bash examples/compare_grid.sh [output, default runs/compare]
set -euo pipefail
OUT=${1:-runs/compare}
CONFIGS=${CONFIGS:-"vit-0.25 resnet-0.25 resnet-0.5 vit-0.5"}  # round robin over lanes: the two ViT rows (the slowest) apart
DIFFUSION_CONFIGS=${DIFFUSION_CONFIGS:-$CONFIGS}  # diffusion certification is the slowest row (a UNet pass per sample)
# Bases and DDPM: VIT, RESNET, DDPM name others (Hub ids or folders, used as they are); unset, the
# embedded default's are trained into these folders when missing.
VIT_GIVEN=${VIT:-}; RESNET_GIVEN=${RESNET:-}; DDPM_GIVEN=${DDPM:-}
VIT=${VIT:-runs/embedded/base-vit}
RESNET=${RESNET:-runs/resnet/base}
DDPM=${DDPM:-runs/baselines/ddpm-mnist}
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
COMMON="--report_to none --save_strategy no --logging_steps 50 --dataloader_num_workers 0 --disable_tqdm true"

[ -n "${VIT_GIVEN:-}" ] || [ -f "$VIT/config.json" ] || python examples/train_base.py --model_type vit --dataset_name embedded:mnist --output_dir "$VIT" \
  --num_train_epochs 30 --per_device_train_batch_size 32 --per_device_eval_batch_size 250 --learning_rate 1e-3 \
  --weight_decay 0.05 --warmup_steps 300 --lr_scheduler_type cosine --max_grad_norm 0 --eval_strategy no $COMMON
[ -n "${RESNET_GIVEN:-}" ] || [ -f "$RESNET/config.json" ] || python examples/train_base.py --model_type resnet --dataset_name embedded:mnist \
  --output_dir "$RESNET" --num_train_epochs 3 --per_device_train_batch_size 32 --per_device_eval_batch_size 250 \
  --learning_rate 1e-3 --warmup_steps 100 --lr_scheduler_type cosine --eval_strategy no $COMMON
[ -n "${DDPM_GIVEN:-}" ] || [ -f "$DDPM/model_index.json" ] || python examples/train_ddpm.py --model_name_or_path "$VIT" --dataset_name embedded:mnist \
  --output_dir "$DDPM" --width 16 --batch_size 32 --max_steps 6000 --max_sigma 0.5 --eval_sigmas 0.25,0.5

LANES=${LANES:-1}
FIRST=${CONFIGS%% *}
coordinator() {  # coordinator CONFIG BASE [ENCODER]: one black-box coordinator per configuration
  [ -f "$OUT/coordinators/$1/train_results.json" ] || python examples/train_blackbox.py --target_model_name_or_path "$2" \
    --dataset_name embedded:mnist --sigma "${1#*-}" --output_dir "$OUT/coordinators/$1" --disable_tqdm true \
    ${3:+--encoder_name_or_path "$3"}
}
echo "== black-box coordinator of $FIRST (pretrains the encoder that every coordinator shares) =="
if [ "${FIRST%-*}" = vit ]; then coordinator "$FIRST" "$VIT"; else coordinator "$FIRST" "$RESNET"; fi
ENCODER=$OUT/coordinators/$FIRST/encoder  # pretrained on clean digits, no labels: the same for every target

run_config() {  # run_config CONFIG: every method of one configuration, its tables copied to benchmarks/results
  local CONFIG=$1 ARCH=${1%-*} SIGMA=${1#*-} BASE SURROGATE N DIFFUSION=""
  local OBJECTIVE_ROWS=full-consistency,lora-smoothadv,full-smoothadv,lora-macer,full-macer
  local METHODS=base,full,lora,linear,dora,adapter,vpt,consistency,$OBJECTIVE_ROWS,dncnn-mse,dncnn-stability
  if [ "$ARCH" = vit ]; then BASE=$VIT; SURROGATE=$RESNET; else BASE=$RESNET; SURROGATE=$VIT; fi
  [ "$ARCH" = vit ] || METHODS=${METHODS/adapter,vpt,/}  # bottleneck adapters and VPT need a transformer
  if [ "$SIGMA" = 0.25 ]; then N=6000; else N=2000; fi
  echo "== $CONFIG: black-box coordinator =="
  coordinator "$CONFIG" "$BASE" "$ENCODER"
  case " $DIFFUSION_CONFIGS " in *" $CONFIG "*) DIFFUSION="--diffusion_model $DDPM" ;; esac
  echo "== $CONFIG: every method =="
  python examples/compare.py --base "$BASE" --output_dir "$OUT/$CONFIG" --sigma "$SIGMA" --n "$N" --skip 20 \
    --methods "$METHODS" --seeds 0,1,2 --seeded_methods "lora,full,$OBJECTIVE_ROWS" --surrogate_model "$SURROGATE" \
    $DIFFUSION --pretrained "blackbox=$OUT/coordinators/$CONFIG"
  mkdir -p "benchmarks/results/comparison/$CONFIG"
  cp "$OUT/$CONFIG"/comparison.{md,tex,json} "$OUT/$CONFIG/certified_accuracy.png" "benchmarks/results/comparison/$CONFIG/"
}

if [ "$LANES" -le 1 ]; then
  for CONFIG in $CONFIGS; do run_config "$CONFIG"; done
  exit 0
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"
read -r -a ALL <<< "$CONFIGS"
PIDS=()
for ((LANE = 0; LANE < LANES; LANE++)); do
  ( for ((I = LANE; I < ${#ALL[@]}; I += LANES)); do run_config "${ALL[I]}"; done ) > "$OUT/lane$LANE.log" 2>&1 &
  PIDS+=($!)
  echo "lane $LANE: pid $!, log $OUT/lane$LANE.log"
done
FAILED=0
for PID in "${PIDS[@]}"; do wait "$PID" || FAILED=1; done
[ "$FAILED" = 0 ] || { echo "a lane failed: see $OUT/lane*.log" >&2; exit 1; }

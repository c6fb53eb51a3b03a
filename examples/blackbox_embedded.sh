#!/usr/bin/env bash
# Black-box PEFTSmoothing on the embedded default: the stand-in base ViT (examples/embedded_default.sh step 1)
# used as a black box at sigma = 0.25.
#   1. train a BlackVIP coordinator by SPSA-GC from queries of the base (its encoder pretrained here as an
#      autoencoder on clean training digits, no labels),
#   2. certify held-out digits with the unadapted base and with base + coordinator (same settings as
#      examples/embedded_default.sh),
#   3. write the side-by-side results to benchmarks/results/blackbox_embedded.json.
# Usage: bash examples/blackbox_embedded.sh [base model folder, default runs/embedded/base-vit] [output, default runs/blackbox]
set -euo pipefail
BASE=${1:-runs/embedded/base-vit}
OUT=${2:-runs/blackbox}
SIGMA=0.25
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error TOKENIZERS_PARALLELISM=false
LAUNCH="accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no"
CERTIFY="--dataset_name embedded:mnist --n0 100 --n 6000 --alpha 0.001 --batch_size 128 --skip 10"

echo "== 1/3 black-box coordinator, SPSA-GC at sigma=$SIGMA =="
$LAUNCH examples/train_blackbox.py --target_model_name_or_path "$BASE" --dataset_name embedded:mnist --sigma $SIGMA \
  --output_dir "$OUT/coordinator-$SIGMA"

echo "== 2/3 certify: unadapted base, then base + coordinator =="
$LAUNCH examples/certify.py --model_name_or_path "$BASE" --sigma $SIGMA $CERTIFY --output_dir "$OUT/base-certify"
$LAUNCH examples/certify.py --model_name_or_path "$OUT/coordinator-$SIGMA" $CERTIFY --output_dir "$OUT/coordinator-$SIGMA/certify"

echo "== 3/3 results =="
python - "$OUT" "$SIGMA" <<'EOF'
import json, os, sys
out, sigma = sys.argv[1], sys.argv[2]
read = lambda *path: json.load(open(os.path.join(out, *path)))
train, before, after = read(f"coordinator-{sigma}", "train_results.json"), read("base-certify", "summary.json"), read(f"coordinator-{sigma}", "certify", "summary.json")
radii = ("0", "0.25", "0.5", "0.75")
row = lambda summary: {"certified_accuracy": {r: summary["certified_accuracy"][r] for r in radii}, "acr": summary["acr"], "abstain_rate": summary["abstain_rate"]}
results = {
    "target": train["target"], "sigma": train["sigma"], "certify_settings": after["settings"],
    "unadapted_base": {"noisy_accuracy": train["noisy_accuracy_before"], **row(before)},
    "blackbox_coordinator": {"noisy_accuracy": train["noisy_accuracy_after"], **row(after)},
    **{key: train[key] for key in ("queries", "steps", "trainable_parameters", "coordinator_parameters", "training_seconds", "autoencoder_seconds", "spsa") if key in train},
}
os.makedirs("benchmarks/results", exist_ok=True)
with open("benchmarks/results/blackbox_embedded.json", "w") as handle:
    json.dump(results, handle, indent=2)
print(json.dumps(results, indent=2))
EOF

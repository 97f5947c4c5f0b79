#!/usr/bin/env bash
# Throughput (images/s) and peak memory of every shipped pipeline on one GPU:
# bf16 autocast, every encoder.vit resized to ViT-S (384 wide, 12 blocks) and then
# ViT-B (768 wide, 12 blocks), patch 4 on 32 px images (64 tokens), batch 256.
# It runs benchmarks/throughput.py (interleaved rounds, medians; CUDA allocator peaks)
# and writes benchmarks/results/gpu_vit_small.json and gpu_vit_base.json. Then the data path with the
# batched colour ops on the GPU: benchmarks/data.py --device cuda (DATA_WORKERS loader workers, default 8,
# on a generated folder of 4000 JPEGs) -> benchmarks/results/gpu_data.json.
#
#   bash benchmarks/gpu.sh                       # on a CUDA machine (a few minutes on one H100/H200)
#   bash benchmarks/gpu.sh --cpu-smoke           # the same code path on CPU: tiny ViT, batch 4, one step
#   bash benchmarks/gpu.sh --pipelines mae dino  # extra arguments go to throughput.py
#
# Needs Fashion-MNIST: `apt-get install dataset-fashion-mnist`, or DATA_ROOT=a folder holding its
# IDX files (train-images-idx3-ubyte.gz ...) on a machine without the package and without network.
# Environment: ROUNDS (5), STEPS (10 per round), BATCH (256), SIZES ("small base"), DATA_ROOT,
# SMOKE_OUT (folder of the smoke JSON, default a temporary folder), DATA_WORKERS (8).
set -euo pipefail
cd "$(dirname "$0")/.."
extra=()
if [[ -n "${DATA_ROOT:-}" ]]; then extra+=(--data-root "${DATA_ROOT}"); fi

if [[ "${1:-}" == "--cpu-smoke" ]]; then
  shift
  out="${SMOKE_OUT:-$(mktemp -d)}"
  # the GPU run's code path (bf16 autocast, resized encoders and heads), tiny and on CPU
  python benchmarks/throughput.py --device cpu --precision bf16 \
    --arch vit_tiny_patch16_224 --depth 1 --embed-dim 64 --num-heads 2 \
    --batch-size 4 --rounds 1 --steps-per-round 1 --warmup 1 --memory none \
    --out "$out/gpu_smoke.json" ${extra[@]+"${extra[@]}"} "$@"
  echo "cpu smoke passed: $out/gpu_smoke.json"
  exit 0
fi

python - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("no CUDA device here; run `bash benchmarks/gpu.sh --cpu-smoke` to check the script on CPU")
print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PY

status=0
for size in ${SIZES:-small base}; do
  case "$size" in
    small) arch=vit_small_patch16_224; dim=384; heads=6 ;;
    base)  arch=vit_base_patch16_224;  dim=768; heads=12 ;;
    *) echo "unknown size $size (small|base)"; exit 2 ;;
  esac
  echo "== ViT-${size} (${dim} wide, 12 blocks), bf16, batch ${BATCH:-256}"
  python benchmarks/throughput.py --device cuda --precision bf16 \
    --arch "$arch" --depth 12 --embed-dim "$dim" --num-heads "$heads" \
    --batch-size "${BATCH:-256}" --rounds "${ROUNDS:-5}" --steps-per-round "${STEPS:-10}" --warmup 3 \
    --out "benchmarks/results/gpu_vit_${size}.json" ${extra[@]+"${extra[@]}"} "$@" || status=$?
done
echo "== data path: views cut by ${DATA_WORKERS:-8} workers, colour ops on the GPU"
python benchmarks/data.py --device cuda --workers "${DATA_WORKERS:-8}" --images 4000 --batches 24 \
  --out benchmarks/results/gpu_data.json || status=$?
exit $status

#!/usr/bin/env bash
# CUDA verification on a GPU machine that has no Rust toolchain. Build here:
#   cargo build --release --features cuda --bin amct
#   cargo test --release --features cuda --test cuda_parity --no-run
# copy both binaries (stripped) into BIN_DIR, carry it to the GPU machine and run
#   scripts/cuda_check.sh BIN_DIR [LOG_DIR]
# from the repository root. It runs the CUDA-vs-CPU parity test, then amct's
# forward and training-step benchmarks on the GPU (and PyTorch's training step
# on the same GPU, where a CUDA PyTorch is installed). Logs go to LOG_DIR.
set -u
BIN=$(realpath "${1:?usage: scripts/cuda_check.sh BIN_DIR [LOG_DIR]}")
LOG=${2:-/tmp/amct-cuda-check}
mkdir -p "$LOG"
REPO=$(pwd)

# The CUDA 13 libraries amct links: the system toolkit's, or pip's nvidia-* wheels'.
for lib in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libcudart.so.13; do
  found=$(find /usr/local /usr/lib /opt -name "$lib" 2>/dev/null | head -1)
  [ -n "$found" ] && LD_LIBRARY_PATH="$(dirname "$found"):${LD_LIBRARY_PATH:-}"
done
export LD_LIBRARY_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$LOG/gpu.txt"
ldd "$BIN/amct" | tee "$LOG/ldd.txt"
if grep -q 'not found' "$LOG/ldd.txt"; then echo "missing libraries" >&2; exit 1; fi

status=0
echo "== parity test"
AMCT_BIN="$BIN/amct" AMCT_REPO="$REPO" timeout 300 "$BIN/cuda_parity" --nocapture 2>&1 \
  | tee "$LOG/parity.log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

echo "== forward throughput, batch 8 (fixtures written by scripts/fixtures/cnn.py)"
mkdir -p /tmp/amct-gen
python3 - <<'EOF' 2>&1 | tee "$LOG/gen.log"
import sys; sys.path.insert(0, "scripts")
import onnx
from fixtures.cnn import mobilenetv2, resnet50
for fx in (mobilenetv2(), resnet50()):
    onnx.save(fx.model, f"/tmp/amct-gen/{fx.name}.onnx")
EOF
for m in mobilenetv2 resnet50; do
  for d in cuda cpu; do
    printf '%s %s ' "$m" "$d" | tee -a "$LOG/forward.txt"
    timeout 120 "$BIN/amct" bench-forward "/tmp/amct-gen/$m.onnx" --batch 8 --iters 10 \
      --device "$d" 2>&1 | tail -1 | tee -a "$LOG/forward.txt"
  done
done

echo "== training step on the GPU, MobileNetV2-shaped, batch 32 at 224x224"
timeout 120 "$BIN/amct" bench-train /tmp/amct-gen/mobilenetv2.onnx --batch 32 --iters 10 --warmup 2 \
  --device cuda 2>&1 | tail -1 | tee "$LOG/train_mv2.txt"

echo "== training step, amct vs PyTorch on the GPU"
PYTHONUNBUFFERED=1 timeout 240 python3 benches/train_step.py --amct "$BIN/amct" --device cuda \
  --iters 20 --warmup 3 2>&1 | tee "$LOG/train_step.txt"
exit $status

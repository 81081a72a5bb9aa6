#!/usr/bin/env bash
# Assembles a CUDA 13.0 build toolchain from NVIDIA's PyPI wheels, for building
# amct with `--features cuda` on a machine that has no CUDA toolkit and no GPU
# (the development machine). The GPU machines we borrow have CUDA 13.0 and a
# driver but no Rust toolchain, so the CUDA binaries are built here and carried
# there (scripts/cuda_check.sh runs them).
#
#   scripts/setup_cuda_toolchain.sh [DIR]        # default /work/cuda13
#   source DIR/env.sh
#   cargo build --release --features cuda --bin amct      # into $CARGO_TARGET_DIR
#   cargo test --release --features cuda --test cuda_parity --no-run
#
# What it does: downloads the pinned wheels (nvcc, crt, nvvm, nvrtc, cudart,
# cccl, cuBLAS, cuRAND), unpacks their nvidia/cu13 tree as DIR/root (laid out
# like CUDA_HOME), adds the unversioned library links the linker wants, and
# builds a link-time stub of the driver library (libcuda.so, soname
# libcuda.so.1, every driver function of cudarc's bindings defined empty) in
# DIR/root/lib/stubs. The stub only satisfies the linker: never put it on a
# runtime library path; the real libcuda.so.1 comes with the GPU's driver.
# Idempotent: a complete DIR is left alone.
set -euo pipefail

DIR=$(realpath -m "${1:-/work/cuda13}")
ROOT=$DIR/root
WHEELS=(
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
  nvidia-cuda-nvrtc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85
  nvidia-cublas==13.0.2.14 nvidia-curand==10.4.0.35
)

if [ -x "$ROOT/bin/nvcc" ] && [ -f "$ROOT/lib/stubs/libcuda.so" ] && [ -f "$DIR/env.sh" ]; then
  echo "$DIR is complete: source $DIR/env.sh"
  exit 0
fi

mkdir -p "$DIR/whl"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
  -d "$DIR/whl" "${WHEELS[@]}"

rm -rf "$DIR/unpack" "$ROOT"
mkdir -p "$DIR/unpack"
for w in "$DIR"/whl/*.whl; do
  python3 -m zipfile -e "$w" "$DIR/unpack"
done
mv "$DIR/unpack/nvidia/cu13" "$ROOT"
rm -rf "$DIR/unpack"
chmod +x "$ROOT"/bin/* "$ROOT"/nvvm/bin/*
ln -sfn lib "$ROOT/lib64"
(
  cd "$ROOT/lib"
  for so in lib*.so.*; do
    base=${so%%.so.*}.so
    [ -e "$base" ] || ln -s "$so" "$base"
  done
)

# The driver stub: every function cudarc's driver bindings declare.
bindings=$(ls ~/.cargo/registry/src/*/cudarc-0.19.10/src/driver/sys/mod.rs 2>/dev/null | head -1)
if [ -z "$bindings" ]; then
  echo "cudarc 0.19.10 is not in ~/.cargo/registry: run 'cargo fetch' in the repository first" >&2
  exit 1
fi
mkdir -p "$ROOT/lib/stubs"
grep -oE '^\s*fn cu[A-Za-z0-9_]+\(' "$bindings" | sed -E 's/^\s*fn //; s/\($//' | sort -u \
  | awk 'BEGIN { print "/* link-time stub of libcuda; not functional */" }
         { printf "int %s(void) { return 999; }\n", $1 }' > "$DIR/cuda_stub.c"
gcc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$ROOT/lib/stubs/libcuda.so" "$DIR/cuda_stub.c"

cat > "$DIR/env.sh" <<EOF
# CUDA 13.0 toolchain from PyPI wheels (scripts/setup_cuda_toolchain.sh).
export CUDA_HOME=$ROOT
export CUDA_PATH=\$CUDA_HOME
export PATH=\$CUDA_HOME/bin:\$CUDA_HOME/nvvm/bin:\$PATH
# No GPU here: candle-kernels' compute capability (H100/H200: 90, built as sm_90a).
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CUDARC_CUDA_VERSION=13000
export CUDAFORGE_THREADS=\${CUDAFORGE_THREADS:-2}
# Link against the wheel libraries and the driver stub (link time only).
export LIBRARY_PATH=\$CUDA_HOME/lib:\$CUDA_HOME/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}
export CARGO_TARGET_DIR=\${CARGO_TARGET_DIR:-/work/target-cuda}
# Compressed kernel images: the binary shrinks from ~60 to ~34 MB (needs driver >= r570).
export NVCC_APPEND_FLAGS="--compress-mode=size"
EOF

# Checks: the compiler reports 13.0, compiles to PTX and to an object, and a
# program links against the driver stub and cuBLAS.
source "$DIR/env.sh"
nvcc --version | grep -q 'release 13.0' || { echo "nvcc is not 13.0" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf '#include <cuda_fp16.h>\n__global__ void k(__half *x) { x[threadIdx.x] = __float2half(1.0f); }\n' \
  > "$work/k.cu"
nvcc --ptx -o "$work/k.ptx" "$work/k.cu"
nvcc -c -o "$work/k.o" "$work/k.cu"
printf 'int cuInit(unsigned); int cublasCreate_v2(void *);\nint main(void) { return cuInit(0) && cublasCreate_v2(0); }\n' \
  > "$work/m.c"
gcc -o "$work/m" "$work/m.c" -lcuda -lcublas
echo "CUDA 13.0 toolchain ready in $DIR: source $DIR/env.sh"

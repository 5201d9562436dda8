#!/usr/bin/env bash
# The prepared GPU check for the Triton scan kernel: one command for the `device` tool on a task
# that is lent a GPU machine (never run by CI; CI checks the same kernels in Triton's
# interpreter). About 3-4 minutes on an H200, most of it the reference loop's benchmark rows.
#
# The device image has torch, triton, numpy, safetensors and pytest but not pydantic, which
# celif_core.spec needs. Fetch its wheels here first (repo root, once per session):
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 -d .whl pydantic pydantic-core annotated-types \
#     typing-inspection
#
# then: run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Results land in $OUT (kernel test log and benchmark table) when OUT is set.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/celif-gpu-check}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

python3 - <<'EOF' 2>&1 | tee "$OUT/versions.txt"
import sys
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
# without a GPU every CUDA test below would skip and pass: stop here instead
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "no CUDA device: nothing to check"; exit 1; }

# 1. compiled Triton kernel == reference on CUDA: every neuron, ce_mode, dtype; a model trains
python3 -m pytest -q -p no:cacheprovider -o addopts="" tests/celif_core/test_kernels_triton.py \
  -k cuda -rs 2>&1 | tee "$OUT/kernel_tests.txt"
tests_rc=${PIPESTATUS[0]}

# 2. training step of the paper's Seq-MNIST network on the GPU, T=784, B=64 and 256
python3 bench/neurons.py --device cuda --batch 64 256 --steps 10 --warmup 3 \
  --configs gemm celif-fused celif-fused-recompute celif-reference lif-fused \
  2>&1 | tee "$OUT/bench_neurons_cuda.txt"
bench_rc=${PIPESTATUS[0]}

echo "kernel tests rc=$tests_rc bench rc=$bench_rc"
exit $((tests_rc || bench_rc))

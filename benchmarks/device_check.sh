#!/usr/bin/env bash
# One-command GPU check: install the GPU extras where missing, run every gpu-marked test, then
# the GPU-vs-CPU benchmark of all workflows, and write one summary table.
#
#   bash benchmarks/device_check.sh            # from the repository root on a CUDA machine
#
# The summary goes to $OUT/device_check.md when OUT is set (else ./device_check.md). Everything
# is sized to finish in well under 8 minutes on one H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-.}"
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/device_check.md"

if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
if ! "$PY" -c "import cloudlab" 2>/dev/null; then
    "$PY" -m pip install -q -e ".[all]"
fi
"$PY" -c "import cupy" 2>/dev/null || "$PY" -m pip install -q -e ".[gpu]"
"$PY" -c "import dask_cuda" 2>/dev/null || "$PY" -m pip install -q dask-cuda
"$PY" -c "import tensorflow as tf, sys; sys.exit(not tf.config.list_physical_devices('GPU'))" \
    2>/dev/null || "$PY" -m pip install -q "tensorflow[and-cuda]" || true

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT_DIR/gpu.txt"

set +e
timeout 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tail -15 | tee "$OUT_DIR/gpu_tests.txt"
tests_rc=${PIPESTATUS[0]}
timeout 420 "$PY" benchmarks/gpu.py --out "$OUT_DIR/gpu_table.md" 2>&1 \
    | grep -v -E "^(I|W)0000|absl|cpu_feature_guard|rebuild TensorFlow" | tee "$OUT_DIR/gpu_bench.txt"
bench_rc=${PIPESTATUS[0]}
set -e

{
    echo "# cloudlab device check ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "GPU: $(head -1 "$OUT_DIR/gpu.txt"); CPU cores: $(nproc)"
    echo
    echo "gpu-marked tests (exit $tests_rc): $(tail -1 "$OUT_DIR/gpu_tests.txt")"
    echo
    echo "Benchmark (exit $bench_rc), python benchmarks/gpu.py:"
    echo
    cat "$OUT_DIR/gpu_table.md" 2>/dev/null || echo "(no table)"
} > "$SUMMARY"
cat "$SUMMARY"
exit $(( tests_rc != 0 || bench_rc != 0 ))

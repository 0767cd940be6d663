#!/usr/bin/env bash
# One-shot GPU benchmark for issue 8: minicrate on CuPy against PyTorch on CUDA (when torch has
# CUDA), configs (a) 8x8x1 d 64, (b) 32x32x3 d 192 and (c) CRATE-T (224x224x3, patch 16, d 384,
# 12 layers, 6 heads, batch 64), float32 and float64.  Meant to finish in under 5 minutes.
#
#   bash benchmarks/gpu_oneshot.sh [OUTDIR]        (default: $OUT if set, else benchmarks/results)
#
# Needs a Python (PYTHON=..., else .venv/bin/python, else python3) with numpy, array-api-compat
# and a CuPy that can run a kernel (pip install -e ".[cuda12]" or ".[cuda13]"); torch with CUDA is
# optional.  Writes gpu.txt (everything printed), gpu.json (every number), nvidia-smi.txt and
# preflight.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-benchmarks/results}}
mkdir -p "$OUTDIR"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
start=$(date +%s)
if command -v nvidia-smi > /dev/null; then
    nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1
else
    echo "nvidia-smi not available" > "$OUTDIR/nvidia-smi.txt"
fi
head -15 "$OUTDIR/nvidia-smi.txt"

# Pre-flight: say exactly what is missing instead of failing inside the benchmark.
if ! "$PY" - > "$OUTDIR/preflight.txt" 2>&1 <<'PYEOF'
import importlib, sys
missing = [m for m in ("numpy", "array_api_compat") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"missing Python packages: {missing} (pip install -e .)")
from minicrate.core.backend import cupy_available
if not cupy_available():
    sys.exit("CuPy cannot run a kernel here (not installed, no GPU, or CUDA libraries missing): "
             "pip install -e '.[cuda12]' (or '.[cuda13]')")
import cupy
print("CuPy", cupy.__version__, "on", cupy.cuda.runtime.getDeviceProperties(0)["name"].decode())
try:
    import torch
    print("torch", torch.__version__, "CUDA:", torch.cuda.is_available())
except ImportError:
    print("torch not installed: minicrate is timed alone")
PYEOF
then
    cat "$OUTDIR/preflight.txt"
    echo "gpu_oneshot: pre-flight failed, nothing timed" | tee -a "$OUTDIR/preflight.txt"
    exit 2
fi
cat "$OUTDIR/preflight.txt"

# The whole run is bounded: 270 s leaves room for start-up inside the 5 minutes.
# torch.compile is left out: compiling six configurations would not fit the 270 s.
timeout 270 "$PY" benchmarks/bench_speed.py --backend cupy --configs a,b,c --no-compile \
    --dtypes float32,float64 --rounds 15 --json "$OUTDIR/gpu.json" --markdown \
    2>&1 | tee "$OUTDIR/gpu.txt"
status=${PIPESTATUS[0]}
echo "gpu_oneshot: exit status $status after $(( $(date +%s) - start )) s; results in $OUTDIR"
exit "$status"

#!/usr/bin/env bash
# Bench leukedge runs on an NVIDIA Jetson (JetPack 6.x): ONNX Runtime FP32 and TensorRT
# FP32/FP16/INT8 engines built here, results in benchmarks/results/<machine_slug>/.
#
#   benchmarks/jetson/bench_jetson.sh runs/allidb2-cnn runs/allidb2-resnet50
#
# Each run dir needs only spec.json and export/ (copied from the training machine): parity is
# measured on export/parity_set.npz against the PyTorch logits recorded there at export.
#
# Environment:
#   VENV=path            virtual environment to create/use (default: .venv-jetson in the repo)
#   ORT_WHEEL=file.whl   onnxruntime-gpu wheel for this JetPack (NVIDIA's Jetson Zoo); without
#                        it PyPI's onnxruntime is installed, which is CPU-only on aarch64
#   JETSON_CLOCKS=1      run `sudo jetson_clocks` first (fixed maximum clocks; recorded)
#   BACKENDS=...         default ort-fp32,trt-fp32,trt-fp16,trt-int8
#   PRECISIONS=...       engines to build, default fp16,int8,fp32
#   DLA_CORE=N           also build fp16/int8 engines for DLA core N (static batch 1; Orin
#                        AGX/NX); bench them with BACKENDS naming the run's .dla engines by hand
#   BENCH_ARGS="..."     extra arguments for benchmarks/bench_suite.py (e.g. "--iters 100")
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-$REPO/.venv-jetson}"
BACKENDS="${BACKENDS:-ort-fp32,trt-fp32,trt-fp16,trt-int8}"
PRECISIONS="${PRECISIONS:-fp16,int8,fp32}"
RUNS=()
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) RUNS+=("$1"); shift ;;
  esac
done
[ ${#RUNS[@]} -gt 0 ] || { echo "usage: $0 RUN_DIR [RUN_DIR...]" >&2; exit 2; }

say() { printf '\n== %s\n' "$*"; }
die() { echo "error: $*" >&2; exit 1; }

say "checking the Jetson"
[ -f /etc/nv_tegra_release ] || die "no /etc/nv_tegra_release: this is not a Jetson with JetPack"
head -n1 /etc/nv_tegra_release
python3 -c 'import sys; assert sys.version_info[:2] >= (3, 10), sys.version' \
  || die "Python 3.10 or newer is needed (JetPack 6.x ships 3.10)"
python3 -c 'import tensorrt; print("TensorRT", tensorrt.__version__)' \
  || die "system TensorRT missing: sudo apt install python3-libnvinfer python3-libnvinfer-dev"
python3 - <<'PY' || die "the system OpenCV has no GStreamer (CSI cameras need it): reinstall JetPack's python3-opencv"
import cv2
info = cv2.getBuildInformation()
line = next((l for l in info.splitlines() if "GStreamer" in l), "GStreamer: ?")
print("OpenCV", cv2.__version__, "from", cv2.__file__, "|", line.strip())
assert "YES" in line
PY
for run in "${RUNS[@]}"; do
  [ -f "$run/spec.json" ] || die "$run/spec.json missing: copy spec.json and export/ of the run"
  [ -f "$run/export/parity_set.npz" ] || die "$run/export/parity_set.npz missing: run \
\`leukedge export $run\` on the training machine (with its data) and copy export/ again"
done

say "virtual environment $VENV (sees the system TensorRT and OpenCV)"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv --system-site-packages "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip

# leukedge without its dependencies, then the base dependencies except OpenCV and
# onnxruntime: a pip OpenCV wheel would shadow the system one and has no GStreamer.
# numpy stays 1.x: the system cv2 and TensorRT bindings are built against numpy 1.x.
"$PY" -m pip install --quiet --no-deps "$REPO"
mapfile -t DEPS < <("$PY" - "$REPO/pyproject.toml" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
for dep in re.findall(r'"([^"]+)"', block):
    name = re.split(r"[<>=!~ \[;]", dep, maxsplit=1)[0].lower()
    if name.startswith(("opencv-", "onnxruntime")):
        continue
    print(f"{dep},<2" if name == "numpy" else dep)
PY
)
"$PY" -m pip install --quiet "${DEPS[@]}"
if [ -n "${ORT_WHEEL:-}" ]; then
  "$PY" -m pip install --quiet "$ORT_WHEEL"
elif ! "$PY" -c 'import onnxruntime' 2>/dev/null; then
  echo "note: ORT_WHEEL not given: installing PyPI onnxruntime (CPU-only on aarch64)."
  "$PY" -m pip install --quiet onnxruntime
fi
# The TensorRT backend moves buffers with cuda-python (JetPack 6 is CUDA 12). `import cuda`
# alone proves nothing (any `cuda` namespace package passes): ask for the runtime module
# leukedge uses (cuda.bindings.runtime, cuda.cudart before cuda-python 12.6) or pycuda.
"$PY" - <<'PY' 2>/dev/null || "$PY" -m pip install --quiet 'cuda-python>=12,<13'
try:
    from cuda.bindings import runtime  # noqa: F401
except ImportError:
    try:
        from cuda import cudart  # noqa: F401
    except ImportError:
        import pycuda.driver  # noqa: F401
PY
"$PY" -c 'from leukedge.runtime.backends.cuda_mem import device_info; print(device_info())' \
  || die "no usable CUDA binding in $VENV (see the message above)"
"$PY" - <<'PY' || die "a pip OpenCV in $VENV shadows the system one: $VENV/bin/pip uninstall opencv-python-headless opencv-python"
import sys
import cv2, numpy, onnxruntime
print("cv2", cv2.__version__, cv2.__file__)
print("numpy", numpy.__version__, "| onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
assert not cv2.__file__.startswith(sys.prefix + "/"), "cv2 comes from the venv"
PY

SLUG="$("$PY" -c 'from leukedge.machine import machine_slug; print(machine_slug())')"
OUT="$REPO/benchmarks/results/$SLUG"
mkdir -p "$OUT"

say "power mode (recorded in $OUT/power_mode.txt)"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nvpmodel -q:"; (sudo -n nvpmodel -q 2>/dev/null || nvpmodel -q 2>&1 || echo "unreadable")
  if [ "${JETSON_CLOCKS:-0}" = "1" ]; then
    sudo jetson_clocks && echo "jetson_clocks: applied before the bench (maximum fixed clocks)"
    sudo jetson_clocks --show 2>&1 || true
  else
    echo "jetson_clocks: not applied (dynamic clocks; set JETSON_CLOCKS=1 to fix them)"
  fi
} | tee "$OUT/power_mode.txt"

# build-engine reports every precision and exits 1 when one failed: bench what was built.
for run in "${RUNS[@]}"; do
  say "TensorRT engines for $run ($PRECISIONS; parity on the parity set vs recorded PyTorch)"
  "$VENV/bin/leukedge" build-engine "$run" --precision "$PRECISIONS" \
    || echo "note: not every engine of $run was built (see above); benching the others"
  if [ -n "${DLA_CORE:-}" ]; then
    say "DLA core $DLA_CORE engines for $run (fp16,int8, static batch 1)"
    "$VENV/bin/leukedge" build-engine "$run" --precision fp16,int8 --dla-core "$DLA_CORE" \
      || echo "note: a DLA engine of $run was not built (see above)"
  fi
  say "check $run: every backend here against PyTorch's recorded logits"
  "$VENV/bin/leukedge" check "$run" \
    || echo "note: a backend of $run is outside its parity budget (see above)"
done

say "bench (no PyTorch here: the reference is PyTorch's logits recorded at export)"
# shellcheck disable=SC2086
"$PY" "$REPO/benchmarks/bench_suite.py" --runs "${RUNS[@]}" --split parity \
  --backends "$BACKENDS" --no-export --out "$OUT" ${BENCH_ARGS:-}
echo "results: $OUT"

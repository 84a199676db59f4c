#!/usr/bin/env bash
# Build flash-attn from its source distribution, offline, for this machine's GPU architecture only, and install it
# into a folder to put on PYTHONPATH. By default only the kernels MosaicBERT runs (benchmarks/patch_flash_attn.py:
# head dims 64 and 128, fp16 and bf16, non-causal, with dropout and ALiBi): 13 compile jobs instead of 73.
#
# usage: bash benchmarks/build_flash_attn.sh SDIST [PREFIX]
#   SDIST   flash_attn-2.8.3.post2.tar.gz, e.g. from
#           pip download --no-deps --no-binary :all: --no-build-isolation flash-attn==2.8.3.post2 -d .
#   PREFIX  where to install (default /tmp/flash_attn_site); then export PYTHONPATH=PREFIX:$PYTHONPATH
# environment:
#   PYTHON                  the Python whose torch to build against (default python3)
#   FLASH_ATTN_CUDA_ARCHS   e.g. "90" (default: the local GPU's, read with torch: 8.x -> 80, 9.0 -> 90, ...)
#   FLASH_ATTN_ALL_KERNELS  1: every kernel, as `pip install flash-attn` builds them (about 6x the compile work)
#   FLASH_ATTN_HEAD_DIMS    head dims of the restricted build (default "64 128"; among 32 64 96 128 192 256)
#   MAX_JOBS                parallel compile jobs (default: the number of cores; each takes a few GB of memory)
#   NVCC_THREADS            nvcc --threads (default 2; it only parallelises over architectures)
#   LOG                     build log (default PREFIX.build.log); WORK: build folder (default a new /tmp folder)
# The last line of a successful run is `flash_attn VERSION OK`, printed by `import flash_attn, flash_attn_2_cuda`
# run from outside the source tree.
set -euo pipefail

SDIST=${1:?usage: bash benchmarks/build_flash_attn.sh SDIST [PREFIX]}
PREFIX=${2:-/tmp/flash_attn_site}
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
SDIST=$(readlink -f "$SDIST")
mkdir -p "$(dirname "$PREFIX")"
PREFIX=$(readlink -f "$PREFIX")
LOG=${LOG:-$PREFIX.build.log}
WORK=${WORK:-$(mktemp -d /tmp/flash_attn_build.XXXXXX)}
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1  # everything below goes to the terminal and the log

T0=$SECONDS
stage() { echo "[$(date +%H:%M:%S) +$((SECONDS - T0))s] $*"; }
trap 'echo "build_flash_attn.sh: FAILED at line $LINENO (exit $?) after $((SECONDS - T0))s; log: $LOG" >&2' ERR

stage "build flash-attn from $SDIST into $PREFIX (log $LOG, work $WORK)"
[ -f "$SDIST" ] || { echo "no such file: $SDIST" >&2; exit 1; }

# nvcc: torch guesses CUDA_HOME from `which nvcc`, wrong when nvcc is a wrapper script outside the toolkit
if [ -z "${CUDA_HOME:-}" ]; then
  nvcc_path=$(command -v nvcc || true)
  for c in ${nvcc_path:+"$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")"} /usr/local/cuda; do
    if [ -x "$c/bin/nvcc" ] && [ -f "$c/include/cuda_runtime.h" ]; then export CUDA_HOME=$c; break; fi
  done
fi
[ -n "${CUDA_HOME:-}" ] || { echo "no CUDA toolkit found (nvcc and include/cuda_runtime.h): set CUDA_HOME" >&2; exit 1; }
export PATH=$CUDA_HOME/bin:$PATH
# without ninja torch compiles the files one after the other: far too slow
if ! command -v ninja > /dev/null; then
  ninja_dir=$("$PY" -c "import ninja; print(ninja.BIN_DIR)" 2> /dev/null || true)
  [ -n "$ninja_dir" ] && export PATH=$ninja_dir:$PATH
fi
command -v ninja > /dev/null || { echo "ninja not found (pip install ninja)" >&2; exit 1; }

if [ -z "${FLASH_ATTN_CUDA_ARCHS:-}" ]; then
  # setup.py knows 80, 90, 100 and 120; sm_80 code runs on every 8.x GPU
  FLASH_ATTN_CUDA_ARCHS=$("$PY" -c "
import sys, torch
if not torch.cuda.is_available():
    sys.exit('no CUDA GPU visible: set FLASH_ATTN_CUDA_ARCHS, e.g. 90 for H100/H200')
major, minor = torch.cuda.get_device_capability()
arch = {8: '80', 9: '90', 10: '100', 12: '120'}.get(major)
if arch is None:
    sys.exit(f'flash-attn 2 has no kernels for compute capability {major}.{minor}')
print(arch)")
fi
for a in ${FLASH_ATTN_CUDA_ARCHS//;/ }; do  # setup.py silently ignores others (no kernels would be built)
  case $a in 80|90|100|120) ;; *) echo "FLASH_ATTN_CUDA_ARCHS: $a is not one of 80 90 100 120" >&2; exit 1 ;; esac
done
export FLASH_ATTN_CUDA_ARCHS
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export NVCC_THREADS=${NVCC_THREADS:-2}
export FLASH_ATTENTION_FORCE_BUILD=TRUE  # never try to download a prebuilt wheel
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"
nvcc --version | tail -n 2
stage "CUDA_HOME=$CUDA_HOME archs=$FLASH_ATTN_CUDA_ARCHS MAX_JOBS=$MAX_JOBS NVCC_THREADS=$NVCC_THREADS" \
  "all kernels=${FLASH_ATTN_ALL_KERNELS:-0}"

stage "extract"
rm -rf "${WORK:?}/src"
mkdir -p "$WORK/src"
tar xzf "$SDIST" -C "$WORK/src"
SRC=$(echo "$WORK"/src/*)  # the sdist's one top folder
[ -f "$SRC/setup.py" ] || { echo "$SDIST does not hold one folder with a setup.py" >&2; exit 1; }

stage "patch"
# torch >= 2.13's headers need C++20 (setup.py of flash-attn <= 2.8.3 pins C++17)
cxx_std=$("$PY" -c "import torch; v = torch.__version__.split('+')[0].split('.')
print('c++20' if (int(v[0]), int(v[1])) >= (2, 13) else 'c++17')")
if [ "${FLASH_ATTN_ALL_KERNELS:-0}" = 1 ]; then
  "$PY" "$HERE/patch_flash_attn.py" "$SRC" --cxx-std "$cxx_std" --all-kernels
else
  # shellcheck disable=SC2086  # the head dims are separate arguments
  "$PY" "$HERE/patch_flash_attn.py" "$SRC" --cxx-std "$cxx_std" --head-dims ${FLASH_ATTN_HEAD_DIMS:-64 128}
fi

stage "compile"
t_compile=$SECONDS
(cd "$SRC" && "$PY" setup.py build_ext --build-lib "$SRC/build/lib" --build-temp "$SRC/build/temp")
so=$(ls "$SRC"/build/lib/flash_attn_2_cuda*.so)
compile_s=$((SECONDS - t_compile))
stage "compiled in ${compile_s}s: $so ($(du -h "$so" | cut -f1))"
if command -v nm > /dev/null; then  # a kernel the dispatcher references but no file defines: fail here, clearly
  missing=$(nm -D --undefined-only "$so" | grep -c "run_mha" || true)
  if [ "$missing" != 0 ]; then
    nm -DC --undefined-only "$so" | grep "run_mha" >&2
    echo "flash_attn_2_cuda references $missing kernel launchers that were not built" >&2
    exit 1
  fi
fi

stage "install"
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$SRC/flash_attn/__init__.py")
mkdir -p "$PREFIX"
rm -rf "$PREFIX"/flash_attn "$PREFIX"/flash_attn_2_cuda*.so "$PREFIX"/flash_attn-*.dist-info
cp -r "$SRC/flash_attn" "$PREFIX/"
cp "$so" "$PREFIX/"
dist=$PREFIX/flash_attn-$version.dist-info  # so that importlib.metadata finds the version too
mkdir -p "$dist"
printf 'Metadata-Version: 2.1\nName: flash_attn\nVersion: %s\n' "$version" > "$dist/METADATA"
printf 'build_flash_attn.sh\n' > "$dist/INSTALLER"

stage "import check"
cd /  # not the source tree, whose flash_attn/ folder has no compiled module
PYTHONPATH=$PREFIX${PYTHONPATH:+:$PYTHONPATH} "$PY" -c "
import flash_attn, flash_attn_2_cuda
print('flash_attn', flash_attn.__version__, 'from', flash_attn.__file__)"
stage "smoke test"
if [ "${FLASH_ATTN_ALL_KERNELS:-0}" = 1 ]; then dims="32 64 96 128 192 256"; else dims=${FLASH_ATTN_HEAD_DIMS:-64 128}; fi
# on a GPU: each built kernel runs forward and backward, and what the build left out is refused clearly. The
# left-out head dim runs in a child process: flash-attn's forward crashes on it instead of raising
cat > "$WORK/smoke_test.py" << 'EOF'
import subprocess
import sys

import torch
from flash_attn import flash_attn_varlen_qkvpacked_func


def run(d, dtype, causal=False, dropout=0.1):
    cu = torch.tensor([0, 100, 101, 300], dtype=torch.int32, device="cuda")
    slopes = torch.tensor([2.0 ** -(i + 1) for i in range(12)], device="cuda")
    qkv = torch.randn(300, 3, 12, d, device="cuda", dtype=dtype, requires_grad=True)
    out = flash_attn_varlen_qkvpacked_func(qkv, cu, 200, dropout, causal=causal, alibi_slopes=slopes)
    out.float().sum().backward()
    assert out.isfinite().all() and qkv.grad.isfinite().all(), (d, dtype)


def refused(what, **kwargs):
    try:
        run(**kwargs)
    except RuntimeError as e:
        print(f"refused as expected ({what}): {str(e).splitlines()[0]}")
    else:
        sys.exit(f"{what} ran, but this build has no kernel for it")


if sys.argv[1] == "--left-out-head-dim":  # the child process
    refused(f"head dim {sys.argv[2]}", d=int(sys.argv[2]), dtype=torch.bfloat16)
    sys.exit(0)
all_kernels, dims = sys.argv[1] == "1", [int(d) for d in sys.argv[2:]]
if not torch.cuda.is_available():
    print("smoke test skipped: no CUDA GPU")
    sys.exit(0)
for d in dims:
    for dtype in (torch.float16, torch.bfloat16):
        run(d, dtype)
        run(d, dtype, dropout=0.0)
if not all_kernels:
    refused("causal", d=dims[0], dtype=torch.bfloat16, causal=True)
    left_out = next((d for d in (256, 192, 128, 96, 64, 32) if d not in dims), None)
    child = subprocess.run([sys.executable, __file__, "--left-out-head-dim", str(left_out)]) if left_out else None
    if child is not None and child.returncode < 0:  # killed by a signal
        print(f"note: head dim {left_out}, not built, crashes the process (signal {-child.returncode}) instead of "
              "raising; MosaicBERT never calls it (it reads flash_attn.KERNEL_HEAD_DIMS)")
    elif child is not None and child.returncode != 0:
        sys.exit(f"head dim {left_out} (not built): the check failed (exit {child.returncode})")
print(f"smoke test: head dims {dims}, fp16 and bf16, forward and backward, with and without dropout: OK")
EOF
PYTHONPATH=$PREFIX${PYTHONPATH:+:$PYTHONPATH} "$PY" "$WORK/smoke_test.py" "${FLASH_ATTN_ALL_KERNELS:-0}" $dims
stage "build total $((SECONDS - T0))s (compile ${compile_s}s)"
PYTHONPATH=$PREFIX${PYTHONPATH:+:$PYTHONPATH} "$PY" -c "
import flash_attn, flash_attn_2_cuda
print('flash_attn', flash_attn.__version__, 'OK')"

#!/usr/bin/env bash
# Build DeepEP in place from a source checkout, for benchmarks/deepep_buffer.py:
#   bash benchmarks/deepep_build.sh /path/to/DeepEP [log-dir]
# (DeepEP is not a dependency of this project; fetch deepseek-ai/DeepEP at the tag wanted.)
# With NVSHMEM importable (nvidia-nvshmem-cu13) setup.py builds internode and low-latency too;
# if that build fails, a copy is built intranode normal only (setup.py's DISABLE_NVSHMEM, reached
# by hiding nvidia.nvshmem from it). CUDA 13 moved the cccl headers under include/cccl (DeepEP
# #568): CPATH adds them. Prints the directory to put on PYTHONPATH; exit 1 if nothing built.
set -uo pipefail
src=$(cd "$1" && pwd); logs=${2:-$PWD}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
CUDA_HOME=${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}; export CUDA_HOME
export CPATH="$CUDA_HOME/include/cccl:$CUDA_HOME/targets/x86_64-linux/include/cccl${CPATH:+:$CPATH}"
build() {  # $1: name, $2: 1 to hide nvidia.nvshmem (intranode normal only)
  local dir="/tmp/deepep-$1"
  rm -rf "$dir" && cp -r "$src" "$dir" && cd "$dir" || return 1
  local start=$SECONDS
  timeout 600 python3 - "$2" >"$logs/deepep-build-$1.log" 2>&1 <<'PY'
import importlib.util
import sys

if sys.argv[1] == "1":
    real = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a: None if name == "nvidia.nvshmem" else real(name, *a)
sys.argv = ["setup.py", "build_ext", "--inplace"]
exec(compile(open("setup.py").read(), "setup.py", "exec"))
PY
  local rc=$?
  echo "deepep $1 build: exit $rc in $((SECONDS - start)) s" >&2
  [ $rc -ne 0 ] && grep -m1 "error" "$logs/deepep-build-$1.log" >&2
  cd - >/dev/null || true
  [ $rc -eq 0 ] && echo "$dir"
  return $rc
}
build full 0 || build normal 1

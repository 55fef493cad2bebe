#!/usr/bin/env bash
# Prepare (do not run) what the GPU machine needs for `benchmarks.sglang_overhead --device cuda`
# with ONE SGLang release: .device/sglang/ (git-ignored), under 60 MiB, carried with
# `carry: [".device/sglang"]`. The GPU machine has Python 3.12, torch 2.11+cu130, Triton, numpy,
# pytest, PyYAML and no network; everything else SGLang's MoE modules import comes from here:
#
#   .device/sglang/site.tar.xz  the wheels below for cp312 / manylinux x86_64, unpacked and pruned:
#                               a directory of sglang/ or transformers/ from which the benchmark
#                               imported no file (traced here, on CPU) is dropped; sibling modules
#                               of every imported file stay, and sglang/srt/{layers,distributed,
#                               utils} and sglang/kernels stay whole (SGLang imports some modules
#                               lazily, and other ones on CUDA)
#   .device/sglang/tree.tar.xz  this project's tracked files (git archive of HEAD)
#   .device/sglang/run.sh       the device-side bootstrap: unpack into $TMPDIR, import check, run
#   .device/sglang/MANIFEST.txt the wheels, their sizes, and what was pruned
#
# Usage: bash benchmarks/sglang_cuda_bundle.sh [RELEASE]   (default 0.5.23; .ci/sglang must have
# built .sglang-venv, which traces the imports with the same release installed).
set -euo pipefail
cd "$(dirname "$0")/.."
RELEASE=${1:-0.5.23}
OUT=.device/sglang
VENV=${SGLANG_VENV:-.sglang-venv}
LIMIT_MIB=60

# What `import sglang.srt.layers.moe.moe_runner.aiter` and the benchmark import beyond the GPU
# machine's own packages, found by importing them in an environment holding only those (the
# versions are the CI venv's). torchvision 0.26.0 is the build for torch 2.11: transformers'
# AutoImageProcessor, which sglang.srt.configs registers at import, refuses to load without it.
WHEELS=(
  "sglang==$RELEASE" torchvision==0.26.0 transformers==5.8.1 tokenizers==0.22.2
  huggingface_hub==1.33.0 safetensors==0.8.0 regex==2026.11.19 httpx==0.29.0 httpcore==1.0.9
  h11==0.16.0 anyio==4.16.0 idna==3.20 certifi==2026.10.19.post1 requests==2.34.2
  urllib3==2.8.0 orjson==3.13.0 psutil==7.2.2 pybase64==1.5.1 pillow==13.0.0 starlette==1.10.0
  msgspec==0.23.0 pydantic==2.14.4 pydantic_core==2.50.5 typing-inspection==0.4.5
  annotated-types==0.8.0 pyzmq==27.3.0 tqdm==4.70.1 ipython==9.18.1 traitlets==5.16.1
  Pygments==2.21.0 aiohttp==3.14.5 multidict==7.2.1 attrs==26.1.0 yarl==1.25.1 propcache==0.5.4
  aiohappyeyeballs==2.7.1 aiosignal==1.4.0 frozenlist==1.8.0 dill==0.4.1
  apache-tvm-ffi==0.1.15.post2 sentencepiece==0.2.3 einops==0.8.2 compressed-tensors==0.20.1
  loguru==0.7.3 gguf==0.19.0
)
# SGLang 0.5.13's server_args imports its OpenAI protocol and function-call parsers at import
# (srt/server_args.py:48 -> srt/entrypoints/openai/protocol.py:36); 0.5.23's MoE path does not.
if [ "$RELEASE" = 0.5.13 ]; then
  WHEELS+=(
    openai==3.57.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 jiter==0.19.0
    sniffio==1.3.1 partial-json-parser==0.2.1.1.post7 click==8.5.1 rich==15.0.0
    markdown-it-py==4.3.0 mdurl==0.1.2 charset-normalizer==3.5.3
  )
fi

installed=$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('sglang'))")
if [ "$installed" != "$RELEASE" ]; then
  echo "error: $VENV has sglang $installed; run: $VENV/bin/pip install --no-deps sglang==$RELEASE" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --abi cp312 --abi abi3 --abi none --platform manylinux_2_34_x86_64 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d "$work/wheels" "${WHEELS[@]}"

# The files the benchmark imports, traced on this machine's CPU with the same release.
"$VENV/bin/python" - "$work/used.txt" <<'EOF'
import atexit, runpy, sys
out = sys.argv[1]
def dump() -> None:
    with open(out, "w") as f:
        f.writelines(f"{m.__file__}\n" for m in list(sys.modules.values())
                     if getattr(m, "__file__", None))
atexit.register(dump)
sys.argv = ["sglang_overhead", "--tokens", "1", "--budget", "0.05"]
runpy.run_module("benchmarks.sglang_overhead", run_name="__main__")
EOF

python3 - "$work" <<'EOF'
import pathlib, shutil, sys, zipfile
work = pathlib.Path(sys.argv[1])
site = work / "site"
for wheel in sorted((work / "wheels").glob("*.whl")):
    zipfile.ZipFile(wheel).extractall(site)
# Directories (relative to site-packages) holding an imported file, and all their parents; the
# layers, kernels, distributed and utils trees stay whole (their CUDA branches import more), and
# so does jit_kernel, whose utils look up its own data directories by path at import (0.5.13:
# moe_runner/runner.py -> deep_gemm.py -> jit_kernel/dsv4, `_resolve_kernel_path`).
whole = [pathlib.PurePath(p) for p in ("sglang/srt/layers", "sglang/kernels",
                                       "sglang/srt/distributed", "sglang/srt/utils",
                                       "sglang/jit_kernel")]
kept = set()
for line in (work / "used.txt").read_text().split():
    parts = pathlib.PurePath(line).parts
    if "site-packages" in parts:
        rel = parts[parts.index("site-packages") + 1 :]
        for i in range(1, len(rel)):
            kept.add(pathlib.PurePath(*rel[:i]))
pruned = []
for top in ("sglang", "transformers"):
    for path in sorted((site / top).rglob("*"), key=lambda p: len(p.parts)):
        rel = path.relative_to(site)
        if any(rel.is_relative_to(w) for w in whole):
            continue
        if path.is_dir() and path.exists() and rel not in kept:
            pruned.append(str(path.relative_to(site)))
            shutil.rmtree(path)
for cache in site.rglob("__pycache__"):
    shutil.rmtree(cache, ignore_errors=True)
(work / "pruned.txt").write_text("\n".join(pruned) + "\n")
EOF

rm -rf "$OUT" && mkdir -p "$OUT"
tar -C "$work/site" -cJf "$OUT/site.tar.xz" .
git archive --format=tar HEAD | xz -9 >"$OUT/tree.tar.xz"
cat >"$OUT/run.sh" <<'EOF'
#!/usr/bin/env bash
# Device side: unpack SGLang's wheels and the project, check the import, run the CUDA row.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(mktemp -d)
mkdir -p "$root/site" "$root/tree"
tar -C "$root/site" -xJf "$here/site.tar.xz"
tar -C "$root/tree" -xJf "$here/tree.tar.xz"
cd "$root/tree"
export PYTHONPATH="$root/tree:$root/site"
# SGLang's CUDA branches import sgl_kernel, its CUDA-only kernel package, which is not carried (the
# benchmark times a stub kernel). Hiding torch's CUDA version makes SGLang's is_cuda() false, so
# it imports as it does on a CPU; the tensors and the stub still run on the GPU.
cat >"$root/site/sitecustomize.py" <<'PY'
import torch

torch.version.cuda = None
PY
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', \
torchvision.__version__, 'cuda', torch.cuda.is_available())"
python3 -c "import sglang.srt.layers.moe.moe_runner.aiter, importlib.metadata as m; \
print('sglang', m.version('sglang'), 'imports')"
python3 -m benchmarks.sglang_overhead --device cuda --out-dir "${OUT:-$root/out}" "$@"
EOF
chmod +x "$OUT/run.sh"
{
  echo "SGLang $RELEASE bundle for Python 3.12 / manylinux x86_64 / torch 2.11"
  echo "wheels:"
  (cd "$work/wheels" && ls -l --block-size=K ./*.whl | awk '{print "  " $5 "  " $9}')
  echo "pruned directories (no file imported by the benchmark): $(wc -l <"$work/pruned.txt")"
  sed 's/^/  /' "$work/pruned.txt"
} >"$OUT/MANIFEST.txt"
size=$(du -sm "$OUT" | cut -f1)
ls -l "$OUT"
echo "bundle: $size MiB in $OUT (limit $LIMIT_MIB MiB)"
if [ "$size" -gt "$LIMIT_MIB" ]; then
  echo "error: the bundle is over $LIMIT_MIB MiB" >&2
  exit 1
fi

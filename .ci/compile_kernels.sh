#!/usr/bin/env bash
# Compile every kernels/*.cu with nvcc so that CI fails on a kernel that does not build.
#
# Each file is built twice, the way CuPy's NVRTC will see it at run time (-std=c++17):
#   1. a cubin for sm_90 (H100/H200), the card we ship for;
#   2. PTX for the oldest virtual architecture this nvcc knows (compute_75 on CUDA 13), the
#      generic target any newer card can JIT.
# The constants the kernels share with the host code come as -D options from
# vertedge.drr_cuda.kernel_defines() (this checkout's, through $PYTHON, default python), as CuPy
# passes them. Warnings are errors (--Werror all-warnings). Outputs go to a temporary folder and
# are thrown away. Usage: .ci/compile_kernels.sh [nvcc options...], e.g. -DVERTEDGE_DRR_FLOAT_SETUP.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nvcc="${NVCC:-nvcc}"
if ! command -v "$nvcc" >/dev/null 2>&1; then
    echo "compile_kernels: '$nvcc' not found on PATH" >&2
    exit 2
fi
defines=()
while IFS= read -r define; do defines+=("$define"); done < <(
    PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python}" -c \
        'from vertedge.drr_cuda import kernel_defines; print(*kernel_defines(), sep="\n")'
)
if [ ${#defines[@]} -eq 0 ]; then
    echo "compile_kernels: vertedge.drr_cuda.kernel_defines() gave no options" >&2
    exit 2
fi
ptx_arch="${PTX_ARCH:-$("$nvcc" --list-gpu-arch | grep '^compute_' | sort -t_ -k2 -n | head -n 1)}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

shopt -s nullglob
sources=("$root"/kernels/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
    echo "compile_kernels: no kernels/*.cu under $root" >&2
    exit 2
fi

"$nvcc" --version | tail -n 1
echo "compile_kernels: ${defines[*]}"
for src in "${sources[@]}"; do
    name="$(basename "$src" .cu)"
    echo "compile_kernels: $name.cu -> sm_90 cubin, $ptx_arch PTX"
    "$nvcc" -std=c++17 --Werror all-warnings -cubin -arch=sm_90 "${defines[@]}" "$@" "$src" -o "$out/$name.sm_90.cubin"
    "$nvcc" -std=c++17 --Werror all-warnings -ptx -arch="$ptx_arch" "${defines[@]}" "$@" "$src" -o "$out/$name.$ptx_arch.ptx"
done
echo "compile_kernels: ${#sources[@]} file(s) OK"

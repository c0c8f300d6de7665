#!/usr/bin/env bash
# GPU check (about 3-5 minutes on one H100/H200, at most 8): lora, qlora (NF4 on CUDA), prompt, prefix and
# full train a few steps in bf16 with peftlab's loop; CUDA peak-memory accounting is checked against
# torch.cuda.max_memory_allocated; each adapter is merged and checked on the GPU; tokens/s and MFU per method.
# Details: benchmarks/gpu_check.py's docstring. Exit status 0 when every check passed.
#
# No download happens here. Before going to a machine without the model cache, where the alias is cached:
#   python benchmarks/gpu_check.py --prepare        # config + tokenizer (4 MB) into .gpu_check/ (git-excluded)
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_24_x86_64 -d .whl bitsandbytes==0.50.2      # 43 MB, for qlora (.whl/ is git-ignored)
# then run this script there with .gpu_check and .whl carried along; a missing wheel only skips qlora.
# Uses the machine's python3 (PYTHON=... to change it) with peftlab from src/ (no install).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site .whl/*.whl
    export PYTHONPATH="/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export PEFTLAB_CACHE="${PEFTLAB_CACHE:-/tmp/peftlab-gpu-check-cache}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: torch sees no GPU here')"
exec timeout 480 "$PY" benchmarks/gpu_check.py "$@"

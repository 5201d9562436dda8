#!/usr/bin/env bash
# The README's two commands:
#   scripts/dev.sh serve [celif serve args]   install, then run the embedded service with a demo job
#   scripts/dev.sh api [launch args]          install, then the API alone in several processes on one
#                                             port (python -m service.predict.launch --processes N ...)
#   scripts/dev.sh test  [pytest args]        install, then run the whole test suite
# Installs into .venv (torch pinned first: an unpinned torch pulled in by another package is a
# multi-GB CUDA build). Tests need PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."

install() {
  if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
  if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q torch==2.13.0
  fi
  .venv/bin/pip install -q -e ".[dev]"
}

# Where MNIST is looked for, the same for `serve` and `test`: $CELIF_MNIST_DIR if set, else the
# shared data folder beside the checkout when it holds the files. (`celif serve` alone defaults
# to <data dir>/mnist and downloads there.)
use_shared_mnist() {
  local shared
  shared="$(cd .. && pwd)/shared/data/mnist"
  if [ -z "${CELIF_MNIST_DIR:-}" ] && [ -f "$shared/train-images-idx3-ubyte.gz" ]; then
    export CELIF_MNIST_DIR="$shared"
  fi
}

cmd="${1:-}"
shift || true
case "$cmd" in
  install)
    install
    ;;
  serve)
    install
    use_shared_mnist
    exec .venv/bin/celif serve --demo "$@"
    ;;
  api)
    install
    use_shared_mnist
    exec .venv/bin/python -m service.predict.launch "$@"
    ;;
  test)
    install
    # The full-MNIST tests read $CELIF_MNIST_DIR (skipped without it; tests/conftest.py).
    use_shared_mnist
    export PATH="$PWD/.venv/bin:$PATH"
    exec .venv/bin/python -m pytest -ra "$@"
    ;;
  *)
    echo "usage: scripts/dev.sh install|serve|api|test [args]" >&2
    exit 2
    ;;
esac

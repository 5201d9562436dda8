#!/usr/bin/env bash
# The long reproduction runs (docs/results.md) on this machine, through the production path:
# PostgreSQL + Redis + an API process + N `celif worker` processes at one torch thread each.
#   scripts/repro-stack.sh start [N_WORKERS]   start (idempotent), print URL and token file
#   scripts/repro-stack.sh stop                 warm stop: workers hand their jobs back
# Everything lives under $CELIF_REPRO_DIR (default ../repro-data beside the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
DIR="${CELIF_REPRO_DIR:-$(cd .. && pwd)/repro-data}"
PORT="${CELIF_REPRO_PORT:-8600}"
DB="${CELIF_REPRO_DB:-celif_repro}"
mkdir -p "$DIR/logs"
export CELIF_ENVIRONMENT=production
export CELIF_DATA_DIR="$DIR"
export CELIF_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:5432/$DB"
export CELIF_BROKER_URL="${CELIF_REPRO_BROKER:-redis://127.0.0.1:6379/0}"
export CELIF_MNIST_DIR="${CELIF_MNIST_DIR:-$(cd .. && pwd)/shared/data/mnist}"
export CELIF_TORCH_THREADS=1 OMP_NUM_THREADS=1
PY="$ROOT/.venv/bin/python"

start() {
  local n="${1:-2}"
  psql -h 127.0.0.1 -U postgres -d test -tAc "SELECT 1 FROM pg_database WHERE datname='$DB'" |
    grep -q 1 || psql -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $DB" >/dev/null
  "$PY" -m celif_cli.main db upgrade
  [ -s "$DIR/token" ] || "$PY" -m celif_cli.main token create --name repro > "$DIR/token"
  if ! curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null; then
    nohup "$PY" -m uvicorn service.app:create_app --factory --host 127.0.0.1 --port "$PORT" \
      --log-level warning >> "$DIR/logs/api.log" 2>&1 &
    echo $! > "$DIR/api.pid"
  fi
  for i in $(seq 1 "$n"); do
    if [ -f "$DIR/worker$i.pid" ] && kill -0 "$(cat "$DIR/worker$i.pid")" 2>/dev/null; then continue; fi
    nohup nice -n 5 "$PY" -m celif_cli.main worker --loglevel INFO >> "$DIR/logs/worker$i.log" 2>&1 &
    echo $! > "$DIR/worker$i.pid"
  done
  echo "API http://127.0.0.1:$PORT  token: $DIR/token  logs: $DIR/logs"
}

stop() {
  for f in "$DIR"/worker*.pid "$DIR"/api.pid; do
    [ -f "$f" ] || continue
    kill -TERM "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  *) echo "usage: scripts/repro-stack.sh start [N_WORKERS] | stop" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# `make run`: three WebSocket echo backends on 127.0.0.1:9001-9003 and sluice in front of them
# with config/sluice.toml. Ctrl-C stops all of them.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${CARGO_TARGET_DIR:-target}/release"
pids=()
cleanup() {
    trap - EXIT INT TERM
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

"$bin/sluice-echo" --listen 127.0.0.1:9001 --listen 127.0.0.1:9002 --listen 127.0.0.1:9003 &
pids+=($!)
"$bin/sluice" run --config config/sluice.toml &
pids+=($!)

cat <<MSG

  sluice is listening on ws://127.0.0.1:8080/ in front of three echo backends.
  Try:   websocat ws://127.0.0.1:8080/chat        (or any WebSocket client)
         curl -i -H 'Connection: Upgrade' -H 'Upgrade: websocket' \\
              -H 'Sec-WebSocket-Version: 13' -H 'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==' \\
              http://127.0.0.1:8080/chat
  Status page: http://127.0.0.1:9090/   metrics: http://127.0.0.1:9090/metrics
  Ctrl-C stops everything.

MSG
wait -n "${pids[@]}"

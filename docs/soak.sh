#!/usr/bin/env bash
# Memory soak of the release brain on the `sim` voice (see docs/benchmarks.md, "Memory").
#
#   cargo build --release && docs/soak.sh [SECONDS]      # default 1800
#
# The brain runs with one body (`creature body-sim`) and one phone face attached, and is
# told something every 3 s, half of it physical tasks, so the ledger keeps growing and
# every actor keeps working. Every 30 s a line goes to stdout:
#   seconds  VmRSS  RssAnon  RssFile (KiB)  tasks in the ledger
# The face client needs Python's `websockets` package (pip install websockets).
set -euo pipefail

SECS=${1:-1800}
BIN=${CREATURE_BIN:-./target/release/creature}
PORT=${SOAK_PORT:-8099}
BASE=http://127.0.0.1:$PORT
[ -x "$BIN" ] || { echo "no $BIN: run cargo build --release first" >&2; exit 2; }
python3 -c 'import websockets' 2>/dev/null || { echo "pip install websockets first" >&2; exit 2; }

WORK=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

CREATURE_LOG=warn "$BIN" serve --addr "127.0.0.1:$PORT" --data-dir "$WORK/data" \
    > "$WORK/serve.log" 2>&1 &
BRAIN=$!
pids+=("$BRAIN")
for _ in $(seq 50); do curl -sf "$BASE/healthz" > /dev/null && break; sleep 0.2; done
"$BIN" body-sim --url "ws://127.0.0.1:$PORT/ws/body" --speed 4 > "$WORK/body.log" 2>&1 &
pids+=($!)
python3 - "$PORT" <<'PY' &
import asyncio, sys, websockets
async def main():
    async with websockets.connect(f"ws://127.0.0.1:{sys.argv[1]}/ws/face") as ws:
        async for _ in ws:
            pass
asyncio.run(main())
PY
pids+=($!)

lines=("bring me the cup" "how are you today" "pick up the red ball"
       "what is your name" "put the book on the shelf" "thank you")
echo "t_s rss_kib anon_kib file_kib tasks"
start=$SECONDS
i=0
while [ $((SECONDS - start)) -lt "$SECS" ]; do
    curl -s -X POST -H 'content-type: application/json' \
        -d "{\"text\": \"${lines[$((i % ${#lines[@]}))]}\"}" "$BASE/api/hear" > /dev/null
    i=$((i + 1))
    if [ $((i % 10)) -eq 0 ]; then
        mem=$(awk '/^(VmRSS|RssAnon|RssFile):/ {printf "%s ", $2}' "/proc/$BRAIN/status")
        tasks=$(curl -s "$BASE/api/tasks?limit=1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
        echo "$((SECONDS - start)) $mem$tasks"
    fi
    sleep 3
done

#!/usr/bin/env python3
"""Memory of the brain as its task ledger grows (see docs/benchmarks.md, "Memory").

    cargo build --release && python3 docs/ledger_stress.py [TASKS]    # default 10000

Starts the release brain (sim voice, a fresh data dir, the body's message rate raised so a
fast body is not paced) with `creature body-sim --speed 200` attached, files TASKS tasks
through `POST /api/tasks` at 50 a second, and prints the brain's memory every 500 tasks
and once more after 30 s idle, then the ledger's summary. Only the standard library.
"""

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("CREATURE_BIN", "./target/release/creature")
PORT = int(os.environ.get("STRESS_PORT", "8098"))
OBJECTS = ["cup", "ball", "book", "spoon", "sock", "plate"]


def memory(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                fields[key] = int(value.split()[0])
    return f'{fields["VmRSS"]:>7} {fields["RssAnon"]:>8} {fields["RssFile"]:>8}'


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    if not os.access(BIN, os.X_OK):
        sys.exit(f"no {BIN}: run cargo build --release first")
    work = tempfile.mkdtemp()
    config = os.path.join(work, "stress.toml")
    with open(config, "w") as f:
        f.write("[server]\nrate_limit_per_sec = 0.0\n[tasks]\nmax_unfinished = 100000\n"
                "[body]\nmax_messages_per_sec = 5000\n")
    quiet = dict(os.environ, CREATURE_LOG="warn")
    brain = subprocess.Popen(
        [BIN, "serve", "--config", config, "--addr", f"127.0.0.1:{PORT}",
         "--data-dir", os.path.join(work, "data")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=quiet)
    body = None
    try:
        time.sleep(2)
        body = subprocess.Popen(
            [BIN, "body-sim", "--url", f"ws://127.0.0.1:{PORT}/ws/body", "--speed", "200"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=quiet)
        time.sleep(1)
        conn = http.client.HTTPConnection("127.0.0.1", PORT)
        print("  tasks  rss_kib anon_kib file_kib  seconds", flush=True)
        start = time.time()
        for n in range(1, count + 1):
            task = {"action": "bring", "object": OBJECTS[n % len(OBJECTS)]}
            conn.request("POST", "/api/tasks", json.dumps(task),
                                {"content-type": "application/json"})
            reply = conn.getresponse()
            reply.read()
            if reply.status != 201:
                sys.exit(f"task {n}: HTTP {reply.status}")
            time.sleep(0.02)
            if n % 500 == 0:
                print(f"{n:>7} {memory(brain.pid)} {time.time() - start:>8.0f}", flush=True)
        time.sleep(30)
        print(f"   idle {memory(brain.pid)}")
        conn.request("GET", "/api/state")
        print(json.dumps(json.loads(conn.getresponse().read())["tasks"]))
    finally:
        brain.send_signal(signal.SIGTERM)
        if body:
            body.terminate()
        brain.wait()
        if body:
            body.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

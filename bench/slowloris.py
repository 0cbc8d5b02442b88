#!/usr/bin/env python3
"""Honest WebSocket handshake latency with and without a slowloris attack on sluice.

    cargo build --release --locked -p sluice -p sluice-testkit --bins
    bench/slowloris.py                      # 5,000 slow clients, 200 honest handshakes
    bench/slowloris.py --slow 2000 --honest 100 --bin target/release

What it does, all on 127.0.0.1, every process it starts stopped by its PID:
  1. starts one `sluice-echo` backend and `sluice` (release build) with `handshake = "5s"`;
  2. baseline: HONEST handshakes (10 at a time), each timed from connect to the end of the 101
     head, then a message echoed and the connection closed; p50, p99, max;
  3. attack: SLOW clients (in a process of their own, so that their timers do not delay the
     honest clients' event loop) that each send a valid head one byte per second, reconnecting
     when sluice cuts them (at the 5 s deadline, with 408), for the whole phase; once they are
     all connected, the same HONEST handshakes are timed again while sluice's RSS, descriptors
     and CPU time are read from /proc; then the attack stops and a last baseline is taken;
  4. prints one JSON object with the figures (docs/security.md keeps the last run's).

The figures are for a 2-core machine where the attack clients, the honest clients and sluice
share the CPUs; the load generator is this single Python thread, so absolute latencies include
its own scheduling. Compare the two phases, not the numbers with other tools.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAD = (b"GET /chat HTTP/1.1\r\nHost: bench.example\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on {port}")


def proc_figures(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmRSS:"))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(stat[11]) + int(stat[12])
    return {"rss_kib": rss, "fds": fds, "cpu_s": ticks / os.sysconf("SC_CLK_TCK")}


async def honest_one(port: int) -> float:
    """Connect, send the head, read the 101 head: its latency. Then echo one frame and close."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    took = time.perf_counter() - started
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"honest handshake answered {head[:40]!r}")
    # One masked text frame "hi", its echo, then close.
    mask = os.urandom(4)
    writer.write(bytes([0x81, 0x82]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"hi")))
    echo = await asyncio.wait_for(reader.readexactly(4), 30)
    if echo != b"\x81\x02hi":
        raise RuntimeError(f"bad echo {echo!r}")
    writer.close()
    return took


async def honest_batch(port: int, count: int, concurrency: int = 10) -> list[float]:
    sem = asyncio.Semaphore(concurrency)
    async def one():
        async with sem:
            return await honest_one(port)
    return list(await asyncio.gather(*(one() for _ in range(count))))


async def slow_client(port: int, stop: asyncio.Event, stats: dict) -> None:
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(1)
            continue
        stats["connected"] += 1
        started = time.monotonic()
        try:
            for byte in HEAD:
                if stop.is_set():
                    break
                writer.write(bytes([byte]))
                try:
                    answer = await asyncio.wait_for(reader.read(64), 1.0)
                except asyncio.TimeoutError:
                    continue
                if answer.startswith(b"HTTP/1.1 408"):
                    stats["cut_408"] += 1
                    stats["cut_after_s"].append(time.monotonic() - started)
                else:
                    stats["other"] += 1
                break
        except OSError:
            stats["reset"] += 1
        finally:
            writer.close()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summary(latencies: list[float]) -> dict:
    ms = [v * 1000 for v in latencies]
    return {"p50_ms": round(pct(ms, 50), 2), "p99_ms": round(pct(ms, 99), 2),
            "max_ms": round(max(ms), 2), "mean_ms": round(statistics.mean(ms), 2)}


async def slow_phase(port: int, count: int, connected, stop, results) -> None:
    stop_flag = asyncio.Event()
    stats = {"connected": 0, "connect_errors": 0, "cut_408": 0, "other": 0, "reset": 0,
             "cut_after_s": []}
    tasks = [asyncio.create_task(slow_client(port, stop_flag, stats)) for _ in range(count)]
    while not stop.is_set():
        connected.value = stats["connected"]
        await asyncio.sleep(0.1)
    stop_flag.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    results.put(stats)


def slow_process(port: int, count: int, connected, stop, results) -> None:
    asyncio.run(slow_phase(port, count, connected, stop, results))


async def main_async(a, port: int, pid: int) -> dict:
    await honest_batch(port, 20)  # warm-up
    baseline = await honest_batch(port, a.honest)
    idle = proc_figures(pid)

    connected = multiprocessing.Value("q", 0)
    stop = multiprocessing.Event()
    results = multiprocessing.Queue()
    attacker = multiprocessing.Process(target=slow_process,
                                       args=(port, a.slow, connected, stop, results))
    attacker.start()
    deadline = time.monotonic() + 60
    while connected.value < a.slow and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    under_before = proc_figures(pid)
    t0 = time.monotonic()
    attacked = await honest_batch(port, a.honest)
    honest_s = time.monotonic() - t0
    under = proc_figures(pid)
    peak_rss = under["rss_kib"]
    # Keep the attack on for one more deadline, so every first-wave client is cut once.
    until = time.monotonic() + 6
    while time.monotonic() < until:
        await asyncio.sleep(0.2)
        peak_rss = max(peak_rss, proc_figures(pid)["rss_kib"])
    stop.set()
    stats = results.get(timeout=60)
    attacker.join(30)
    after = await honest_batch(port, a.honest)
    cuts = stats.pop("cut_after_s")
    return {
        "slow_clients": a.slow, "honest_handshakes": a.honest, "handshake_timeout_s": 5,
        "baseline": summary(baseline), "under_attack": summary(attacked),
        "after_attack": summary(after),
        "p99_ratio": round(pct(attacked, 99) / pct(baseline, 99), 2),
        "rss_kib_idle": idle["rss_kib"], "rss_kib_under_attack_peak": peak_rss,
        "fds_under_attack": under["fds"],
        "sluice_cpu_s_during_honest_phase": round(under["cpu_s"] - under_before["cpu_s"], 2),
        "honest_phase_s": round(honest_s, 2),
        "slow": stats,
        "slow_cut_after_s": {"min": round(min(cuts), 2), "max": round(max(cuts), 2)} if cuts else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slow", type=int, default=5000)
    ap.add_argument("--honest", type=int, default=200)
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get(
        "CARGO_TARGET_DIR", ROOT / "target")) / "release")
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    backend_port, port = free_port(), free_port()
    tmp = tempfile.mkdtemp(prefix="sluice-slowloris-")
    config = Path(tmp) / "sluice.toml"
    config.write_text(f"""
[[listeners]]
name = "public"
listen = "127.0.0.1:{port}"

[[routes]]
listener = "public"
pool = "echo"

[pools.echo]
backends = ["127.0.0.1:{backend_port}"]

[timeouts]
handshake = "5s"
""")
    procs = []
    try:
        procs.append(subprocess.Popen([str(a.bin / "sluice-echo"), "--listen",
                                       f"127.0.0.1:{backend_port}", "--log", "warn"]))
        wait_port(backend_port)
        sluice = subprocess.Popen([str(a.bin / "sluice"), "run", "--config", str(config)],
                                  env={**os.environ, "RUST_LOG": "warn"})
        procs.append(sluice)
        wait_port(port)
        result = asyncio.run(main_async(a, port, sluice.pid))
        print(json.dumps(result, indent=2))
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""sluice's benchmark suite: sluice against a direct connection, HAProxy and nginx, in one run.

    make bench                 # release build, full run (10–15 min), updates docs/performance.md
    make bench QUICK=1         # smoke run (~1 min): 1 repetition, small counts, docs untouched
    bench/run.py --help        # targets, scenarios, repetitions, CPUs, --sluice-b for an A/B run

What one run does:
  1. installs HAProxy and nginx from Debian when missing (as root; otherwise they are skipped);
  2. starts three WebSocket echo backends (`sluice-echo`, one thread) on 127.0.0.1:19001-19003,
     pinned with the load generator to one CPU, and one more echo backend on the proxy's CPU
     (127.0.0.1:19100) for the cross-core probe;
  3. memory: for each repetition, for each proxy in turn (A B C … A B C …), starts it fresh,
     pinned to the other CPU in single-thread / single-worker mode, warms it up with a few
     handshakes and holds idle tunnels (`sluice-load idle`), reading its RSS, descriptors and
     pipes from /proc while they are held;
  4. traffic: starts every proxy, then for each repetition, for each scenario (handshake, echo1,
     echo, bulk), runs it on every target in turn, each run preceded by the cross-core probe,
     reading the proxy's CPU time from /proc before and after;
  5. writes bench/results/RUN/results.jsonl (one line per target, repetition and scenario),
     report.md and chart.svg (bench/report.py), and with --update-docs the results block of
     docs/performance.md and docs/performance.svg.

Everything runs on 127.0.0.1; every process this script starts is stopped by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "bench" / "conf"
RESULTS = ROOT / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")

BACKENDS = ["127.0.0.1:19001", "127.0.0.1:19002", "127.0.0.1:19003"]
# An echo backend on the proxy's CPU, for the cross-core probe only.
PROBE = "127.0.0.1:19100"
TARGETS = {
    "direct": {"kind": "direct"},
    "sluice": {"kind": "sluice", "mode": "auto", "port": 18080},
    "sluice-splice": {"kind": "sluice", "mode": "splice", "port": 18081},
    "sluice-copy": {"kind": "sluice", "mode": "copy", "port": 18082},
    "sluice-pipe1m": {"kind": "sluice", "mode": "auto", "port": 18086, "extra": "pipe_size = 1048576"},
    "haproxy": {"kind": "haproxy", "splice": False, "port": 18083},
    "haproxy-splice": {"kind": "haproxy", "splice": True, "port": 18084},
    "nginx": {"kind": "nginx", "port": 18085},
}
SCENARIOS = ["idle", "handshake", "echo1", "echo", "bulk"]

PROFILES = {
    "full": {
        "reps": 5,
        "idle": {"connections": 5000, "concurrency": 64, "hold": 2},
        "handshake": {"count": 5000, "concurrency": 16},
        "echo1": {"size": 32, "warmup": 0.5, "duration": 2},
        "echo": {"connections": 64, "size": 32, "warmup": 0.5, "duration": 3},
        "bulk": {"connections": 8, "size": 65536, "duration": 3},
    },
    "quick": {
        "reps": 1,
        "idle": {"connections": 1000, "concurrency": 64, "hold": 1},
        "handshake": {"count": 1000, "concurrency": 16},
        "echo1": {"size": 32, "warmup": 0.2, "duration": 1},
        "echo": {"connections": 64, "size": 32, "warmup": 0.3, "duration": 1.5},
        "bulk": {"connections": 8, "size": 65536, "duration": 1.5},
    },
}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# /proc sampling
# ---------------------------------------------------------------------------------------------

def children(pid):
    """Direct children of `pid` (nginx's workers)."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            if int(rest[1]) == pid:
                kids.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def cpu_seconds(pids):
    """utime+stime of the processes (all their threads, exited ones included), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            total += int(rest[11]) + int(rest[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def cpu_ns_seconds(pids):
    """The same CPU time from the scheduler's own nanosecond clock: the sum over every thread of
    `/proc/PID/task/TID/schedstat` (run time). Precise where utime+stime count 10 ms ticks; blind
    to threads that exit between two samples (none of the proxies' threads do). None if the
    kernel has no schedstat."""
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (OSError, IndexError, ValueError):
                return None
    return total / 1e9


def cpu_times():
    """{cpu: (busy, steal)} in seconds since boot, from /proc/stat (busy excludes idle, iowait
    and steal)."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            v = [int(x) for x in fields[:8]]
            user, nice, system, idle, iowait, irq, softirq, steal = v + [0] * (8 - len(v))
            out[int(name[3:])] = ((user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK)
    return out


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def descriptors(pids):
    """(descriptors, pipes, sockets) open in the processes; a pipe is counted once, not per end."""
    fds, pipes, sockets = 0, set(), 0
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            fds += 1
            if target.startswith("pipe:"):
                pipes.add(target)
            elif target.startswith("socket:"):
                sockets += 1
    return fds, len(pipes), sockets


# ---------------------------------------------------------------------------------------------
# Processes: every one started here is remembered and stopped by its PID
# ---------------------------------------------------------------------------------------------

STARTED: list[subprocess.Popen] = []


def start(argv, cpu, logfile, env=None):
    full = ["taskset", "-c", str(cpu), *argv]
    out = open(logfile, "ab")
    p = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env={**os.environ, **(env or {})})
    out.close()
    STARTED.append(p)
    return p


def stop(p, sig=signal.SIGTERM, grace=10.0):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in STARTED:
        STARTED.remove(p)


def stop_all():
    for p in list(STARTED):
        stop(p, grace=5.0)


def wait_port(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------

def render(template, dest, **values):
    text = (CONF / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    Path(dest).write_text(text)
    return dest


class Target:
    def __init__(self, name, spec, ctx):
        self.name, self.spec, self.ctx = name, spec, ctx
        self.proc = None

    @property
    def addrs(self):
        if self.spec["kind"] == "direct":
            return BACKENDS
        return [f"127.0.0.1:{self.spec['port']}"]

    def pids(self):
        if self.proc is None:
            return []
        return [self.proc.pid, *children(self.proc.pid)]

    def start(self):
        kind, ctx = self.spec["kind"], self.ctx
        if kind == "direct":
            return
        tmp, port = ctx.tmp, self.spec["port"]
        listen = f"127.0.0.1:{port}"
        logf = ctx.logs / f"{self.name}.log"
        if kind == "sluice":
            cfg = render("sluice.toml", tmp / f"{self.name}.toml", LISTEN=listen, MODE=self.spec["mode"],
                         SERVERS=", ".join(f'"{b}"' for b in BACKENDS), EXTRA=self.spec.get("extra", ""))
            binary = self.spec.get("bin") or ctx.bin / "sluice"
            argv = [str(binary), "run", "--config", str(cfg), "--threads", "1"]
            self.proc = start(argv, ctx.proxy_cpu, logf, env={"RUST_LOG": "warn"})
        elif kind == "haproxy":
            splice = "    option splice-request\n    option splice-response" if self.spec["splice"] else ""
            servers = "\n".join(f"    server s{i + 1} {b}" for i, b in enumerate(BACKENDS))
            cfg = render("haproxy.cfg", tmp / f"{self.name}.cfg", LISTEN=listen, SPLICE=splice,
                         SERVERS=servers, TMP=str(tmp))
            self.proc = start(["haproxy", "-db", "-f", str(cfg)], ctx.proxy_cpu, logf)
        elif kind == "nginx":
            servers = "\n".join(f"        server {b};" for b in BACKENDS)
            cfg = render("nginx.conf", tmp / f"{self.name}.conf", LISTEN=listen, SERVERS=servers, TMP=str(tmp))
            self.proc = start(["nginx", "-g", "daemon off;", "-c", str(cfg), "-p", str(tmp)],
                              ctx.proxy_cpu, logf)
        wait_port(port, self.proc)
        time.sleep(0.2)  # nginx: the worker is forked after the master binds

    def stop(self):
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


# ---------------------------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------------------------

def load_argv(ctx, target, scenario, params, ready_file=None):
    argv = ["taskset", "-c", str(ctx.load_cpu), str(ctx.bin / "sluice-load")]
    for a in target.addrs:
        argv += ["--target", a]
    argv += ["--label", target.name, "--max-seconds", "120", scenario]
    for key, value in params.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    if ready_file:
        argv += ["--ready-file", str(ready_file)]
    return argv


def run_scenario(ctx, target, scenario, rep, with_probe=False):
    params = dict(ctx.profile[scenario])
    pids = target.pids()
    ready = ctx.tmp / "ready" if scenario == "idle" else None
    if ready and ready.exists():
        ready.unlink()
    record = {"target": target.name, "rep": rep, "scenario": scenario, "params": params}
    proxy = {}
    if pids:
        proxy["rss_kib_before"] = rss_kib(pids)
        fds, pipes, socks = descriptors(pids)
        proxy.update(fds_before=fds, pipes_before=pipes)
    quiet_wait = wait_quiet(ctx)
    if with_probe:
        record["probe_rtt_us"] = probe(ctx)
    counters = start_counters(ctx, pids)
    backend_cpu0 = cpu_seconds([ctx.backends.pid])
    machine0 = cpu_times()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0, ns0 = cpu_seconds(pids), cpu_ns_seconds(pids)
    t0 = time.monotonic()
    gen = subprocess.Popen(load_argv(ctx, target, scenario, params, ready), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    STARTED.append(gen)
    if ready:
        deadline = time.monotonic() + 90
        while not ready.exists() and gen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if ready.exists() and pids:
            time.sleep(0.3)  # let the last tunnels settle into their idle state
            proxy["rss_kib_held"] = rss_kib(pids)
            fds, pipes, socks = descriptors(pids)
            proxy.update(fds_held=fds, pipes_held=pipes, sockets_held=socks)
    try:
        out, err = gen.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        gen.kill()
        out, err = gen.communicate()
    wall = time.monotonic() - t0
    STARTED.remove(gen)
    cpu1, ns1 = cpu_seconds(pids), cpu_ns_seconds(pids)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    backend_cpu1 = cpu_seconds([ctx.backends.pid])
    machine1 = cpu_times()
    if counters is not None:
        proxy.update(stop_counters(counters))
    if pids:
        # utime+stime (10 ms ticks) and the scheduler's nanoseconds: the same time, measured
        # twice; the figures use the precise one when the kernel has it, and the two must agree.
        proxy["cpu_ticks_s"] = round(cpu1 - cpu0, 4)
        precise = None if ns0 is None or ns1 is None else ns1 - ns0
        proxy["cpu_ns_s"] = None if precise is None else round(precise, 6)
        proxy["cpu_s"] = proxy["cpu_ns_s"] if precise is not None else proxy["cpu_ticks_s"]
        proxy["rss_kib_after"] = rss_kib(pids)
    record["proxy"] = proxy or None
    gen_cpu = (children1.ru_utime + children1.ru_stime) - (children0.ru_utime + children0.ru_stime)
    record["quiet_wait_s"] = quiet_wait
    record["load"] = {
        "wall_s": round(wall, 3),
        "gen_cpu_s": round(gen_cpu, 4),
        "backend_cpu_s": round(backend_cpu1 - backend_cpu0, 4),
    }
    # What else ran on the two CPUs meanwhile (other work on the machine, the kernel's own), and
    # what the host took (steal): the context that explains a noisy run.
    def delta(cpu, i):
        a, b = machine0.get(cpu), machine1.get(cpu)
        return None if a is None or b is None else b[i] - a[i]
    busy_p, busy_l = delta(ctx.proxy_cpu, 0), delta(ctx.load_cpu, 0)
    ours_p = proxy.get("cpu_s") or 0.0
    ours_l = gen_cpu + (backend_cpu1 - backend_cpu0)
    if busy_p is not None and busy_l is not None and wall > 0:
        record["machine"] = {
            "foreign_proxy_cpu_pct": round(max(0.0, busy_p - ours_p) * 100 / wall, 1),
            "foreign_load_cpu_pct": round(max(0.0, busy_l - ours_l) * 100 / wall, 1),
            "steal_pct": round(((delta(ctx.proxy_cpu, 1) or 0) + (delta(ctx.load_cpu, 1) or 0)) * 100 / wall, 1),
        }
    try:
        record["gen"] = json.loads(out.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        record["gen"] = None
    if gen.returncode != 0 or record["gen"] is None or record["gen"].get("error"):
        record["error"] = (record["gen"] or {}).get("error") or f"sluice-load exited {gen.returncode}: {err.strip()[-500:]}"
    if target.proc is not None and target.proc.poll() is not None:
        record["error"] = f"the proxy exited with {target.proc.returncode}"
    return record


def perf_works():
    """Whether `perf stat` can count instructions here (hardware counters in a VM often can't)."""
    if shutil.which("perf") is None:
        return False
    try:
        p = subprocess.run(["perf", "stat", "-x,", "-e", "instructions:u", "true"], capture_output=True,
                           text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0 and any(line.split(",")[0].isdigit() for line in p.stderr.splitlines())


def start_counters(ctx, pids):
    """Instructions retired by the proxy, user and kernel apart (`perf stat -p`), when perf can:
    a count that does not move with the machine's load the way time does."""
    if not ctx.perf or not pids:
        return None
    out = ctx.tmp / "perf.csv"
    p = subprocess.Popen(["perf", "stat", "-x,", "-e", "instructions:u,instructions:k", "-p",
                          ",".join(map(str, pids)), "-o", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    STARTED.append(p)
    time.sleep(0.2)  # perf attaches before the traffic starts
    return p, out


def stop_counters(counters):
    p, out = counters
    stop(p, sig=signal.SIGINT)
    found = {}
    try:
        for line in out.read_text().splitlines():
            fields = line.split(",")
            if len(fields) > 2 and fields[0].isdigit():
                found["instructions_user" if fields[2].endswith(":u") else "instructions_kernel"] = int(fields[0])
    except OSError:
        pass
    return found


QUIET_BUSY_PCT = 15.0     # a CPU busier than this with nothing of ours running is "not quiet"
QUIET_WAIT_PER_RUN = 5.0  # seconds one run may wait for quiet CPUs
QUIET_WAIT_TOTAL = 120.0  # seconds a whole suite may spend waiting


def wait_quiet(ctx):
    """On a shared machine, waits (bounded) until neither CPU is busy with other work, so that a
    run does not start in the middle of someone's compile. Returns the seconds waited."""
    waited = 0.0
    cpus = (ctx.proxy_cpu, ctx.load_cpu)
    while True:
        a = cpu_times()
        time.sleep(0.25)
        b = cpu_times()
        busiest = max(100.0 * (b[c][0] - a[c][0]) / 0.25 for c in cpus if c in a and c in b)
        if busiest < QUIET_BUSY_PCT or waited >= QUIET_WAIT_PER_RUN or ctx.quiet_budget <= 0:
            return round(waited, 2)
        time.sleep(0.5)
        waited += 0.75
        ctx.quiet_budget -= 0.75


CONTAMINATED_PCT = 25.0   # other work above this share of a CPU during a run: run it again
MAX_ATTEMPTS = 3          # ... at most this many times in all


def run_until_clean(ctx, target, scenario, rep):
    """Runs a traffic scenario; if other work took more than CONTAMINATED_PCT of a CPU that the
    run depends on meanwhile, runs it again while the suite's retry budget lasts."""
    attempts = 0
    while True:
        attempts += 1
        r = run_scenario(ctx, target, scenario, rep, with_probe=True)
        m = r.get("machine") or {}
        foreign = max(m.get("foreign_load_cpu_pct") or 0.0,
                      0.0 if target.spec["kind"] == "direct" else m.get("foreign_proxy_cpu_pct") or 0.0)
        wall = (r.get("load") or {}).get("wall_s") or 0.0
        if (r.get("error") or foreign <= CONTAMINATED_PCT or attempts >= MAX_ATTEMPTS
                or ctx.retry_budget < wall):
            r["attempts"] = attempts
            return r
        ctx.retry_budget -= wall
        log(f"rep {rep} {target.name:<14} {scenario:<9} other work took {foreign:.0f} % of a CPU: again")


def warm_up(ctx, target):
    """A few handshakes: the proxy's lazy start-up work is not charged to the first scenario."""
    argv = load_argv(ctx, target, "handshake", {"count": 20, "concurrency": 4})
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"warm-up failed: {p.stdout.strip()} {p.stderr.strip()[-300:]}")


def probe(ctx):
    """p50 of a WebSocket ping-pong between the two CPUs with nothing in between (the load
    generator on its CPU, an echo backend on the proxy's): how fast the machine moves a message
    across cores right now. On a VM it changes from minute to minute; the report shows it."""
    argv = ["taskset", "-c", str(ctx.load_cpu), str(ctx.bin / "sluice-load"), "--target", PROBE,
            "--max-seconds", "20", "echo1", "--warmup", "0.1", "--duration", "0.4"]
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        return json.loads(p.stdout.strip().splitlines()[-1])["latency"]["p50_us"]
    except (IndexError, KeyError, TypeError, json.JSONDecodeError, subprocess.TimeoutExpired):
        return None


def summary_line(r):
    g, p = r.get("gen") or {}, r.get("proxy") or {}
    cpu = p.get("cpu_s")
    s = r["scenario"]
    bits = []
    if r.get("error"):
        return f"ERROR {r['error']}"
    if s == "idle":
        if p.get("rss_kib_held") is not None and g.get("opened"):
            bits.append(f"{(p['rss_kib_held'] - p['rss_kib_before']) / g['opened']:.2f} KiB/tunnel, "
                        f"{p.get('pipes_held')} pipes")
        bits.append(f"open {g.get('open_s')}s")
    elif s == "handshake":
        bits.append(f"{g.get('rate_per_s')}/s p50 {g['latency']['p50_us']}µs p99 {g['latency']['p99_us']}µs")
        if cpu is not None and g.get("ok"):
            bits.append(f"{cpu * 1e6 / g['ok']:.1f} CPU-ms/1k")
    elif s in ("echo", "echo1"):
        bits.append(f"{g.get('rate_per_s')}/s p50 {g['latency']['p50_us']}µs p99 {g['latency']['p99_us']}µs")
        if cpu is not None and g.get("round_trips"):
            bits.append(f"{cpu * 1e6 / g['round_trips']:.2f} CPU-s/M")
    elif s == "bulk":
        bits.append(f"{g.get('mb_per_s')} MB/s")
        if cpu is not None and g.get("relayed_bytes"):
            bits.append(f"{cpu / (g['relayed_bytes'] / 2**30):.3f} CPU-s/GiB")
    if g.get("errors"):
        bits.append(f"{g['errors']} errors ({g.get('first_error')})")
    return ", ".join(bits)


# ---------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------

def ensure_peers(wanted, install):
    missing = [pkg for pkg, binary in (("haproxy", "haproxy"), ("nginx", "nginx"))
               if any(TARGETS[t]["kind"] == pkg for t in wanted) and shutil.which(binary) is None]
    if missing and install and os.geteuid() == 0:
        log(f"installing {' '.join(missing)} from Debian")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False, env=env,
                       stdout=subprocess.DEVNULL)
    kept = []
    for t in wanted:
        kind = TARGETS[t]["kind"]
        if kind in ("haproxy", "nginx") and shutil.which(kind) is None:
            log(f"{kind} is not installed: target {t} skipped")
            continue
        kept.append(t)
    return kept


def version(argv):
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return None


def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} vCPU {model}, {mem:.0f} GiB, Linux {platform.release()}"


def git(*args):
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


class Ctx:
    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 repetition, small counts")
    ap.add_argument("--reps", type=int, help="repetitions (full: 3)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, from {','.join(TARGETS)}")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, from {','.join(SCENARIOS)}")
    ap.add_argument("--proxy-cpu", type=int, default=0, help="CPU the proxy is pinned to")
    ap.add_argument("--load-cpu", type=int, default=1, help="CPU of the load generator and backends")
    ap.add_argument("--bin", type=Path, help="directory of sluice, sluice-echo and sluice-load "
                                             "(default: ${CARGO_TARGET_DIR:-target}/release)")
    ap.add_argument("--out", type=Path, help="results directory (default: bench/results/<time>)")
    ap.add_argument("--sluice-b", type=Path, metavar="BINARY",
                    help="another sluice binary (e.g. a branch's build) run as target sluice-b, relay auto, "
                         "beside the others: an A/B comparison in one run")
    ap.add_argument("--quiet-budget", type=float, default=QUIET_WAIT_TOTAL, metavar="SECONDS",
                    help="most seconds the suite waits, in all, for CPUs free of other work (default %(default)s)")
    ap.add_argument("--retry-budget", type=float, default=180.0, metavar="SECONDS",
                    help="most seconds spent re-running runs that other work disturbed (default %(default)s)")
    ap.add_argument("--note", help="a sentence for the report's header (e.g. which build was measured)")
    ap.add_argument("--no-install", action="store_true", help="never apt-get install HAProxy or nginx")
    ap.add_argument("--update-docs", action="store_true", help="rewrite the results of docs/performance.md")
    a = ap.parse_args()

    ctx = Ctx()
    profile_name = "quick" if a.quick else "full"
    ctx.profile = json.loads(json.dumps(PROFILES[profile_name]))
    reps = a.reps or ctx.profile.pop("reps")
    ctx.profile.pop("reps", None)
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    ctx.bin = (a.bin or (target_dir if target_dir.is_absolute() else ROOT / target_dir) / "release").resolve()
    for b in ("sluice", "sluice-echo", "sluice-load"):
        if not (ctx.bin / b).exists():
            sys.exit(f"{ctx.bin / b} is missing: build with `cargo build --release -p sluice -p sluice-testkit "
                     f"-p sluice-bench` (or `make bench`)")
    ncpu = os.cpu_count() or 1
    ctx.proxy_cpu, ctx.load_cpu = a.proxy_cpu % ncpu, a.load_cpu % ncpu
    if ctx.proxy_cpu == ctx.load_cpu:
        log("warning: one CPU only: the proxy shares it with the load generator")
    if a.sluice_b:
        TARGETS["sluice-b"] = {"kind": "sluice", "mode": "auto", "port": 18087, "bin": a.sluice_b.resolve()}
        if "sluice-b" not in a.targets.split(","):
            a.targets += ",sluice-b"
    scenarios = [s for s in a.scenarios.split(",") if s]
    unknown = [s for s in scenarios if s not in SCENARIOS] + [t for t in a.targets.split(",") if t not in TARGETS]
    if unknown:
        sys.exit(f"unknown target or scenario: {', '.join(unknown)}")
    targets = ensure_peers([t for t in a.targets.split(",") if t], not a.no_install)

    run_id = datetime.now().strftime("%Y%m%d-%H%M%S") + ("-quick" if a.quick else "")
    out = (a.out or RESULTS / run_id).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx.logs = out / "logs"
    ctx.logs.mkdir(exist_ok=True)
    ctx.tmp = Path(tempfile.mkdtemp(prefix="sluice-bench-"))
    ctx.perf = perf_works()
    ctx.quiet_budget = a.quiet_budget
    ctx.retry_budget = a.retry_budget
    if not ctx.perf:
        log("perf cannot count instructions here: CPU time only")
    if a.out is None:
        latest = RESULTS / "latest"
        if latest.is_symlink() or latest.exists():
            latest.unlink()
        latest.symlink_to(out.name)

    versions = [v for v in (version([str(ctx.bin / "sluice"), "--version"]),
                            version(["haproxy", "-v"]) if "haproxy" in " ".join(targets) else None,
                            version(["nginx", "-v"]) if "nginx" in targets else None) if v]
    meta = {
        "run_id": run_id,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": profile_name,
        "reps": reps,
        "targets": targets,
        "scenarios": scenarios,
        "commit": git("rev-parse", "--short", "HEAD") or "?",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "machine": machine(),
        "versions": "; ".join(v.split(" - ")[0] for v in versions) + "." if versions else "",
        "proxy_cpu": ctx.proxy_cpu,
        "load_cpu": ctx.load_cpu,
        "params": {s: ctx.profile[s] for s in scenarios},
        "backends": BACKENDS,
        "note": a.note,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))

    def on_signal(signum, _frame):
        stop_all()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    log(f"run {run_id}: targets {','.join(targets)}; scenarios {','.join(scenarios)}; {reps} repetitions; "
        f"results in {out}")
    try:
        backend_argv = [str(ctx.bin / "sluice-echo"), "--threads", "1", "--log", "warn"]
        for b in BACKENDS:
            backend_argv += ["--listen", b]
        ctx.backends = start(backend_argv, ctx.load_cpu, ctx.logs / "backends.log")
        for b in BACKENDS:
            wait_port(int(b.rsplit(":", 1)[1]), ctx.backends)
        ctx.probe = start([str(ctx.bin / "sluice-echo"), "--threads", "1", "--log", "warn", "--listen", PROBE],
                          ctx.proxy_cpu, ctx.logs / "probe.log")
        wait_port(int(PROBE.rsplit(":", 1)[1]), ctx.probe)
        with open(out / "results.jsonl", "w") as results:
            def emit(r):
                results.write(json.dumps(r) + "\n")
                results.flush()
                log(f"rep {r['rep']} {r['target']:<14} {r['scenario']:<9} {summary_line(r)}")

            # Phase 1, memory: each proxy fresh, warmed up by a few handshakes, then idle tunnels.
            if "idle" in scenarios:
                # Memory per tunnel varies by a few bytes run to run: 3 repetitions are plenty.
                for rep in range(1, min(reps, 3) + 1):
                    for name in [t for t in targets if TARGETS[t]["kind"] != "direct"]:
                        target = Target(name, TARGETS[name], ctx)
                        try:
                            target.start()
                            warm_up(ctx, target)
                            emit(run_scenario(ctx, target, "idle", rep))
                        except RuntimeError as e:
                            emit({"target": name, "rep": rep, "scenario": "idle", "error": str(e)})
                        finally:
                            target.stop()
            # Phase 2, traffic: every proxy up at once (idle ones cost nothing), and each scenario
            # runs on every target in turn, so that targets compared are measured seconds, not
            # minutes, apart; a probe of the cross-core round trip comes right before each run.
            traffic = [s for s in scenarios if s != "idle"]
            live = {}
            if traffic:
                for name in targets:
                    target = Target(name, TARGETS[name], ctx)
                    try:
                        target.start()
                        warm_up(ctx, target)
                        live[name] = target
                    except RuntimeError as e:
                        target.stop()
                        emit({"target": name, "rep": 0, "scenario": "start", "error": str(e)})
            for rep in range(1, reps + 1):
                for scenario in traffic:
                    for name, target in live.items():
                        if target.proc is not None and target.proc.poll() is not None:
                            emit({"target": name, "rep": rep, "scenario": scenario,
                                  "error": f"the proxy exited with {target.proc.returncode}"})
                            continue
                        emit(run_until_clean(ctx, target, scenario, rep))
            for target in live.values():
                target.stop()
    finally:
        stop_all()
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    log(f"done in {time.monotonic() - started:.0f}s")
    md, _ = report.build(out, a.update_docs)
    sys.stdout.write(md)
    log(f"report: {out / 'report.md'}" + ("; docs/performance.md updated" if a.update_docs else ""))


if __name__ == "__main__":
    main()

"""Performance benchmark: rag-gateway vs a direct call, thin pass-throughs and the LiteLLM proxy.

    python bench/run.py                 # full suite (make bench): 3 runs x 10 s per measurement
    python bench/run.py --quick         # smoke run: 1 run x 3 s, fewer requests everywhere
    python bench/run.py --profile       # also py-spy the gateway under load, top costs in the report
    python bench/run.py --skip-litellm  # leave the LiteLLM proxy out

Everything runs on loopback against tests/mock_upstream.py. The server under test is pinned to
one core, the mock(s) and the load generator (wrk, one thread) to the other. Output:
bench/results/latest.json, bench/results/latest.md and bench/RESULTS.md (same table, committed).
See bench/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.metadata
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import profile_summary
from procs import Server, busy_seconds, cpu_seconds, free_port, rss_mb, status_kb

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
TMP = RESULTS / "tmp"
LOGS = RESULTS / "logs"
LUA = BENCH / "post.lua"
LUA_UNIQUE = BENCH / "post_unique.lua"  # a different question per request (cache always misses)
LITELLM_VENV = ROOT / ".cache" / "bench-venv-litellm"
UPSTREAM_MODEL = "gpt-4o-mini"  # a name in LiteLLM's cost map, as a real deployment's would be
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in one short sentence."},
]
# Allowed RSS change between "after warm-up" and "after N more requests" before we call it growth:
# allocator arenas and freelists move by a few MB without any leak.
RSS_GROWTH_TOLERANCE_MB = 5.0


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- targets ------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str  # short id used in JSON
    label: str  # shown in the table
    base: str  # http://127.0.0.1:port
    model: str  # model name in the request body
    key: str = ""
    server: Server | None = None  # the process whose CPU and RSS we read
    error: str | None = None  # why it could not be measured
    results: dict[str, Any] = field(default_factory=dict)
    lua: Path = LUA  # LUA_UNIQUE: the user turn is __Q__, replaced by a new question per request

    @property
    def url(self) -> str:
        return self.base + "/v1/chat/completions"

    @property
    def ok(self) -> bool:
        return self.error is None

    def body(self, stream: bool = False) -> bytes:
        messages = MESSAGES
        if self.lua == LUA_UNIQUE:
            messages = [MESSAGES[0], {"role": "user", "content": "__Q__"}]
        payload: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": 16}
        if stream:
            payload["stream"] = True
        return json.dumps(payload).encode()

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers


# -- wrk ----------------------------------------------------------------------------------------


def require_tools() -> None:
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        print(
            f"bench: missing {', '.join(missing)}. Install with:\n"
            "  sudo apt-get update && sudo apt-get install -y wrk util-linux\n"
            "(wrk is Debian/Ubuntu's `wrk` package; on macOS: brew install wrk, without taskset pinning)",
            file=sys.stderr,
        )
        sys.exit(2)


def wrk(target: Target, duration_s: float, connections: int, core: int, threads: int = 1) -> dict[str, Any]:
    """One wrk run; returns req/s, latency percentiles (ms), errors, and the target's CPU time."""
    body_file = TMP / f"body-{target.name}-{target.model}.json"
    body_file.write_bytes(target.body())
    cmd = [
        "taskset",
        "-c",
        str(core),
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        str(target.lua),
        target.url,
    ]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_KEY": target.key}
    pid = target.server.pid if target.server else None
    cpu_before = cpu_seconds(pid) if pid else 0.0
    ours_before, busy_before, started = our_cpu_seconds(), busy_seconds(), time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=duration_s + 60)
    cpu_after = cpu_seconds(pid) if pid else 0.0
    wall = time.monotonic() - started
    # CPU the machine spent on processes that are not ours (other jobs on a shared box): it
    # competes with the server under test, so each run records it and the report flags it.
    foreign = (busy_seconds() - busy_before) - (our_cpu_seconds() - ours_before)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout[-500:]}")
    raw = json.loads(line[len("BENCH_JSON ") :])
    seconds = raw["duration_us"] / 1e6
    requests = raw["requests"]
    errors = raw["errors"]
    return {
        "requests": requests,
        "seconds": round(seconds, 3),
        "rps": requests / seconds if seconds else 0.0,
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "p90_ms": raw["latency_us"]["p90"] / 1000,
        "p99_ms": raw["latency_us"]["p99"] / 1000,
        "max_ms": raw["latency_us"]["max"] / 1000,
        "non_2xx": errors["status"],
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        "cpu_s": round(cpu_after - cpu_before, 3),
        "cpu_us_per_req": (cpu_after - cpu_before) / requests * 1e6 if requests and pid else None,
        "server_cpu_pct": 100 * (cpu_after - cpu_before) / wall if pid else None,
        "foreign_cpu_pct": max(0.0, 100 * foreign / wall),
        **({"cache": raw["cache"]} if "cache" in raw else {}),
    }


# Every server we start; their CPU (with ours and wrk's) is subtracted from the machine's.
TRACKED: list[Server] = []


def our_cpu_seconds() -> float:
    own = os.times()
    total = own.user + own.system + own.children_user + own.children_system  # this process and wrk
    return total + sum(cpu_seconds(s.pid) for s in TRACKED if s.alive())


def background_load(seconds: float = 2.0) -> float:
    """Busy CPU, in % of one core, of everything but us over a short window."""
    ours, busy, started = our_cpu_seconds(), busy_seconds(), time.monotonic()
    time.sleep(seconds)
    foreign = (busy_seconds() - busy) - (our_cpu_seconds() - ours)
    return max(0.0, 100 * foreign / (time.monotonic() - started))


def wait_for_quiet(max_wait_s: float, threshold_pct: float = 15.0) -> float:
    """Wait (bounded) until other processes use under threshold_pct of a core; returns the last reading."""
    deadline = time.monotonic() + max_wait_s
    load = background_load()
    while load > threshold_pct and time.monotonic() < deadline:
        log(f"other processes are using {load:.0f}% of a core; waiting for a quieter machine")
        time.sleep(5)
        load = background_load()
    return load


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric medians over runs; error counts are summed."""
    out: dict[str, Any] = {"runs": len(runs)}
    for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "cpu_us_per_req", "server_cpu_pct"):
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    for key in ("requests", "non_2xx", "socket_errors"):
        out[key] = sum(r[key] for r in runs)
    if any("cache" in r for r in runs):
        out["cache"] = {
            k: sum(r.get("cache", {}).get(k, 0) for r in runs)
            for k in ("hit", "semantic_hit", "miss_or_bypass", "no_header")
        }
    out["foreign_cpu_pct_max"] = max((r.get("foreign_cpu_pct", 0.0) for r in runs), default=0.0)
    return out


# -- set-up -------------------------------------------------------------------------------------


def write_gateway_config(port: int, mock_fast: int, mock_slow: int, key: str, production_key: str) -> Path:
    from gateway.policy import hash_key

    policies = TMP / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "_default.yaml").write_text("models: [bench, bench-slow]\nlog_content: false\n")
    (policies / "bench.yaml").write_text(f'tenant: bench\napi_keys: ["{hash_key(key)}"]\n')
    # The chain a production tenant turns on (issue 18), on the same gateway as the bare tenant.
    production = {"tenant": "production", "api_keys": [hash_key(production_key)], **PRODUCTION_CHAIN}
    (policies / "production.yaml").write_text(json.dumps(production))
    config = TMP / "gateway.yaml"
    config.write_text(
        f"""# written by bench/run.py
server: {{host: 127.0.0.1, port: {port}}}
policies_dir: policies
models:
  - name: bench
    deployments:
      - {{provider: openai_compatible, model: {UPSTREAM_MODEL}, api_base: "http://127.0.0.1:{mock_fast}/v1"}}
  - name: bench-slow
    deployments:
      - {{provider: openai_compatible, model: {UPSTREAM_MODEL}, api_base: "http://127.0.0.1:{mock_slow}/v1"}}
state: memory
# As issue 18 measures the chain: the request log and tracing off (their cost is the telemetry
# phase's to measure), metrics on.
telemetry: {{traces: false, request_log: {{enabled: false}}}}
# Priced, so the production tenant's budget reserves and settles real amounts.
pricing:
  bench: {{input_per_1k: 0.00015, output_per_1k: 0.0006}}
  bench-slow: {{input_per_1k: 0.00015, output_per_1k: 0.0006}}
"""
    )
    return config


def write_litellm_config(mock_fast: int, mock_slow: int, master_key: str) -> Path:
    config = TMP / "litellm.yaml"
    config.write_text(
        f"""# written by bench/run.py
model_list:
  - model_name: bench
    litellm_params:
      model: openai/{UPSTREAM_MODEL}
      api_base: "http://127.0.0.1:{mock_fast}/v1"
      api_key: sk-mock
  - model_name: bench-slow
    litellm_params:
      model: openai/{UPSTREAM_MODEL}
      api_base: "http://127.0.0.1:{mock_slow}/v1"
      api_key: sk-mock
litellm_settings:
  drop_params: true
  set_verbose: false
general_settings:
  master_key: {master_key}
  disable_spend_logs: true
"""
    )
    return config


def ensure_litellm(reinstall: bool) -> tuple[Path | None, str]:
    """LiteLLM proxy in its own venv under .cache/ (gitignored): (its executable, its version or why not)."""
    exe = LITELLM_VENV / "bin" / "litellm"
    python = LITELLM_VENV / "bin" / "python"
    if reinstall and LITELLM_VENV.exists():
        shutil.rmtree(LITELLM_VENV)
    if not exe.exists():
        log(f"installing litellm[proxy] into {LITELLM_VENV.relative_to(ROOT)} (one-off, a few minutes)")
        install_log = LOGS / "litellm-install.log"
        with install_log.open("wb") as out:
            steps = [
                [sys.executable, "-m", "venv", str(LITELLM_VENV)],
                [str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
                # httptools: the same HTTP parser our uvicorn uses, so the server stacks match.
                [str(python), "-m", "pip", "install", "-q", "litellm[proxy]", "httptools"],
            ]
            for step in steps:
                try:
                    rc = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, timeout=1200).returncode
                except subprocess.TimeoutExpired:
                    rc = -1
                if rc != 0:
                    return None, f"install failed (`{' '.join(step[-3:])}` exited {rc}; see {install_log})"
    try:
        version = subprocess.run(
            [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"installed but not importable: {exc}"
    return exe, version


def validate(target: Target, stream: bool = False) -> str | None:
    """One request through the target; None when it answered a proper completion."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", int(target.base.rsplit(":", 1)[1]), timeout=30)
        conn.request("POST", "/v1/chat/completions", target.body(stream), target.headers())
        response = conn.getresponse()
        raw = response.read()
        conn.close()
    except OSError as exc:
        return f"request failed: {exc}"
    if response.status != 200:
        return f"HTTP {response.status}: {raw[:300]!r}"
    if stream:
        return None if b"[DONE]" in raw else f"stream without [DONE]: {raw[-200:]!r}"
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        return f"not a chat completion: {raw[:300]!r}"
    return None if content else "empty completion"


# -- streaming time to first byte ---------------------------------------------------------------


def ttfb_series(targets: list[Target], requests: int, time_cap_s: float) -> dict[str, dict[str, Any]]:
    """Sequential streaming requests, interleaved across targets over keep-alive connections.

    TTFB = from sending the request to receiving the first bytes of the response body (the
    first SSE event); the rest of the stream is read and checked for [DONE].
    """
    conns = {
        t.name: http.client.HTTPConnection("127.0.0.1", int(t.base.rsplit(":", 1)[1]), timeout=30)
        for t in targets
    }
    samples: dict[str, list[float]] = {t.name: [] for t in targets}
    overhead: dict[str, list[float]] = {t.name: [] for t in targets}
    failures: dict[str, int] = {t.name: 0 for t in targets}
    deadline = time.monotonic() + time_cap_s
    warmup = min(50, requests // 10)
    for i in range(requests + warmup):
        if time.monotonic() > deadline:
            break
        for t in targets:
            body, headers = t.body(stream=True), t.headers()
            conn = conns[t.name]
            start = time.perf_counter()
            conn.request("POST", "/v1/chat/completions", body, headers)
            response = conn.getresponse()
            first = response.read1(65536)
            elapsed = time.perf_counter() - start
            rest = response.read()
            if response.status != 200 or b"[DONE]" not in first + rest:
                failures[t.name] += 1
                continue
            if i >= warmup:
                samples[t.name].append(elapsed * 1000)
                reported = response.getheader("x-gateway-overhead-ms")
                if reported:
                    overhead[t.name].append(float(reported))
    for conn in conns.values():
        conn.close()
    out = {}
    for t in targets:
        values = sorted(samples[t.name])
        if not values:
            out[t.name] = {"requests": 0, "failures": failures[t.name]}
            continue
        out[t.name] = {
            "requests": len(values),
            "failures": failures[t.name],
            "p50_ms": percentile(values, 50),
            "p90_ms": percentile(values, 90),
            "p99_ms": percentile(values, 99),
            "self_reported_overhead_p50_ms": statistics.median(overhead[t.name])
            if overhead[t.name]
            else None,
        }
    return out


def percentile(sorted_values: list[float], pct: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


# -- the suite ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3, help="runs per measurement; medians are reported")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=8, help="concurrent connections (wrk -c)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded load per target first")
    p.add_argument("--latency-ms", type=float, default=50.0, help="mock latency for the added-latency test")
    p.add_argument("--ttfb-requests", type=int, default=1000, help="sequential streaming requests per target")
    p.add_argument("--mem-requests", type=int, default=100_000, help="requests between the RSS readings")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 x 3 s, 150 TTFB, 10k memory requests")
    p.add_argument("--profile", action="store_true", help="py-spy the gateway under load (needs py-spy)")
    p.add_argument("--profile-seconds", type=float, default=20.0)
    p.add_argument("--skip-litellm", action="store_true", help="do not install or run the LiteLLM proxy")
    p.add_argument(
        "--wait-quiet", type=float, default=120.0, help="wait up to this many s for other CPU load to stop"
    )
    p.add_argument("--gateway-src", help="benchmark the gateway code in this checkout (e.g. a git worktree)")
    p.add_argument("--reinstall-litellm", action="store_true", help="recreate its venv first")
    p.add_argument("--server-core", type=int, default=0, help="core for the server under test")
    p.add_argument("--load-core", type=int, default=1, help="core for the mock and wrk")
    p.add_argument(
        "--phase-duration",
        type=float,
        default=3.0,
        help="seconds per wrk run in the stage and telemetry phases",
    )
    p.add_argument("--cache-requests", type=int, default=1000, help="timed exact cache hits")
    p.add_argument("--skip-retrieval", action="store_true", help="leave out retrieval latency and ingestion")
    p.add_argument("--no-commit-copy", action="store_true", help="do not copy the table to bench/RESULTS.md")
    args = p.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.warmup = 1, 3.0, 1.0
        args.ttfb_requests, args.mem_requests, args.profile_seconds = 150, 10_000, 5.0
        args.wait_quiet, args.phase_duration, args.cache_requests = 0.0, 2.0, 200
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_tools()
    if len(os.sched_getaffinity(0)) < 2:
        log("warning: fewer than 2 usable cores; server and load generator will share one")
    for d in (TMP, LOGS):
        d.mkdir(parents=True, exist_ok=True)
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    started = time.monotonic()
    servers = TRACKED  # every server started is tracked for CPU accounting and stopped at the end
    report: dict[str, Any] = {"args": vars(args), "environment": environment(), "notes": []}
    try:
        run_suite(args, servers, report)
    finally:
        for server in reversed(servers):
            rc = server.stop()
            report.setdefault("exit_codes", {})[server.name] = rc
    if not args.skip_retrieval:
        retrieval_phase(args, report)  # after every server stopped: it uses both cores
    report["wall_s"] = round(time.monotonic() - started, 1)
    report["logs"] = scan_logs(servers)
    write_outputs(args, report)
    return 0


def run_suite(args: argparse.Namespace, servers: list[Server], report: dict[str, Any]) -> None:
    load = wait_for_quiet(args.wait_quiet)
    report["background_load_pct_at_start"] = round(load, 1)
    if load > 15:
        report["notes"].append(
            f"other processes were using {load:.0f}% of a core when the suite started; "
            "see the 'other load' column"
        )
    sc, lc = args.server_core, args.load_core
    py = sys.executable
    mock_fast_port, mock_slow_port = free_port(), free_port()
    mock_cmd = [py, str(ROOT / "tests" / "mock_upstream.py"), "--port"]
    mock_fast = Server("mock", [*mock_cmd, str(mock_fast_port)], mock_fast_port, LOGS, lc)
    mock_slow = Server(
        "mock-latency",
        [*mock_cmd, str(mock_slow_port), "--latency-ms", f"{args.latency_ms:g}"],
        mock_slow_port,
        LOGS,
        lc,
    )
    for mock in (mock_fast, mock_slow):
        servers.append(mock)
        mock.start()
    for mock in (mock_fast, mock_slow):
        mock.wait_ready(30)

    # rag-gateway: ONE worker, pinned to the server core.
    gw_port = free_port()
    key = "sk-bench-" + os.urandom(12).hex()
    production_key = "sk-bench-prod-" + os.urandom(12).hex()
    config = write_gateway_config(gw_port, mock_fast_port, mock_slow_port, key, production_key)
    gw_exe = Path(py).parent / "rag-gateway"
    gw_cmd = [str(gw_exe)] if gw_exe.exists() and not args.gateway_src else [py, "-m", "gateway"]
    gw_src = Path(args.gateway_src).resolve() if args.gateway_src else ROOT
    if args.gateway_src:
        commit = subprocess.run(
            ["git", "-C", str(gw_src), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        report["environment"]["commit"] = f"{commit or 'unknown'} via --gateway-src"
        report["notes"].append(
            f"gateway code from {gw_src} (commit {commit or 'unknown'}), not the working tree"
        )
    gateway = Server(
        "rag-gateway",
        [
            *gw_cmd,
            "serve",
            "--config",
            str(config),
            "--port",
            str(gw_port),
            "--workers",
            "1",
            "--log-level",
            "warning",
        ],
        gw_port,
        LOGS,
        sc,
        ready_path="/healthz",
        cwd=gw_src,
        env={"PYTHONPATH": str(gw_src)} if args.gateway_src else None,
    )
    servers.append(gateway)
    gateway.start()
    gateway.wait_ready(60)
    time.sleep(1.0)
    memory: dict[str, Any] = {
        "idle_rss_mb": rss_mb(gateway.pid),
        "idle_cpu_s_at_start": cpu_seconds(gateway.pid),
    }
    log(f"gateway ready (pid {gateway.pid}), idle RSS {memory['idle_rss_mb']:.1f} MB")
    memory["idle_rss_no_retrieval_mb"] = idle_rss_without_retrieval(gw_cmd, gw_src, args, config, report)

    passthroughs = []
    for kind, upstream_port in (
        ("httpx", mock_fast_port),
        ("aiohttp", mock_fast_port),
        ("aiohttp", mock_slow_port),
    ):
        port = free_port()
        server = Server(
            f"passthrough-{kind}" + ("-latency" if upstream_port == mock_slow_port else ""),
            [
                py,
                "-m",
                "uvicorn",
                f"passthrough_{kind}:app",
                "--app-dir",
                str(BENCH),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--workers",
                "1",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            port,
            LOGS,
            sc,
            env={"BENCH_UPSTREAM": f"http://127.0.0.1:{upstream_port}/v1"},
        )
        servers.append(server)
        server.start()
        passthroughs.append(server)

    litellm_server: Server | None = None
    litellm_error: str | None = None
    litellm_key = "sk-bench-litellm-" + os.urandom(8).hex()
    if args.skip_litellm:
        litellm_error = "skipped (--skip-litellm)"
    else:
        exe, detail = ensure_litellm(args.reinstall_litellm)
        if exe is None:
            litellm_error = detail
        else:
            report["environment"]["litellm"] = detail
            port = free_port()
            env = {
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_TELEMETRY_DISABLED": "True",
                "LITELLM_LOG": "ERROR",
                "DATABASE_URL": None,
                "STORE_MODEL_IN_DB": "False",
            }
            litellm_server = Server(
                "litellm-proxy",
                [
                    str(exe),
                    "--config",
                    str(write_litellm_config(mock_fast_port, mock_slow_port, litellm_key)),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--num_workers",
                    "1",
                ],
                port,
                LOGS,
                sc,
                env=env,
                ready_path="/health/liveliness",
                cwd=TMP,
            )
            servers.append(litellm_server)
            litellm_server.start()
    for server in passthroughs:
        server.wait_ready(60)
    if litellm_server is not None:
        try:
            litellm_server.wait_ready(240)
        except RuntimeError as exc:
            litellm_error = f"did not start: {exc}\n{litellm_server.log_tail(15)}"

    def target(name: str, label: str, server: Server | None, base: str, model: str, key: str = "") -> Target:
        return Target(name, label, base, model, key, server)

    direct = target("direct", "direct (wrk → mock)", mock_fast, mock_fast.base, UPSTREAM_MODEL)
    gw = target("gateway", "rag-gateway", gateway, gateway.base, "bench", key)
    gw_production = target(
        "gateway_production", PRODUCTION_LABEL, gateway, gateway.base, "bench", production_key
    )
    pt_httpx = target(
        "passthrough_httpx",
        "pass-through: starlette + httpx",
        passthroughs[0],
        passthroughs[0].base,
        UPSTREAM_MODEL,
    )
    pt_aiohttp = target(
        "passthrough_aiohttp",
        "pass-through: starlette + aiohttp",
        passthroughs[1],
        passthroughs[1].base,
        UPSTREAM_MODEL,
    )
    lite = target(
        "litellm",
        "LiteLLM proxy",
        litellm_server,
        litellm_server.base if litellm_server else "",
        "bench",
        litellm_key,
    )
    lite.error = litellm_error
    targets = [direct, gw, gw_production, pt_httpx, pt_aiohttp, lite]
    for t in targets:
        if t.ok:
            t.error = validate(t) or validate(t, stream=True)
        if t.error:
            log(f"{t.label}: not measured: {t.error.splitlines()[0]}")
    if not gw.ok:
        raise RuntimeError(f"the gateway does not answer: {gw.error}")
    live = [t for t in targets if t.ok]

    # 1-4: throughput, mock at zero latency. Warm every target, then interleave the runs so a
    # slow drift of the machine hits every target alike.
    log(f"warm-up: {args.warmup:g} s per target")
    for t in live:
        wrk(t, args.warmup, args.connections, lc)
    memory["rss_after_warmup_mb"] = rss_mb(gateway.pid)
    throughput: dict[str, list[dict[str, Any]]] = {t.name: [] for t in live}
    for run in range(args.runs):
        order = live[run % len(live) :] + live[: run % len(live)]
        for t in order:
            result = wrk(t, args.duration, args.connections, lc)
            throughput[t.name].append(result)
            log(
                f"throughput run {run + 1}/{args.runs} {t.label}: {result['rps']:.0f} req/s, "
                f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                f"errors {result['non_2xx'] + result['socket_errors']}"
            )
    report["throughput"] = {
        name: {"median": median_of(runs), "runs": runs} for name, runs in throughput.items()
    }

    # 5: added latency at light load (upstream answers in --latency-ms): at --connections clients,
    # whose requests arrive in bursts (wrk's clients stay in lock-step behind the same upstream
    # delay), and at one client, which isolates the per-request cost from queueing in the burst.
    pt_slow = passthroughs[2]
    slow_targets = [
        Target("direct", "direct (wrk → mock)", mock_slow.base, UPSTREAM_MODEL, "", mock_slow),
        Target("gateway", "rag-gateway", gateway.base, "bench-slow", key, gateway),
        Target("gateway_production", PRODUCTION_LABEL, gateway.base, "bench-slow", production_key, gateway),
        Target("passthrough_aiohttp", pt_aiohttp.label, pt_slow.base, UPSTREAM_MODEL, "", pt_slow),
    ]
    if lite.ok:
        slow_targets.append(
            Target("litellm", "LiteLLM proxy", lite.base, "bench-slow", litellm_key, lite.server)
        )
    slow_targets = [t for t in slow_targets if validate(t) is None]
    levels = sorted({args.connections, 1}, reverse=True)
    latency: dict[int, dict[str, list[dict[str, Any]]]] = {
        c: {t.name: [] for t in slow_targets} for c in levels
    }
    for t in slow_targets:
        wrk(t, min(args.warmup, 2.0), args.connections, lc)
    for run in range(args.runs):
        for clients in levels:
            for t in slow_targets:
                result = wrk(t, args.duration, clients, lc)
                latency[clients][t.name].append(result)
                log(
                    f"latency run {run + 1}/{args.runs} {clients} clients {t.label}: "
                    f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms"
                )
    report["latency"] = {
        "upstream_latency_ms": args.latency_ms,
        "levels": {
            str(clients): {
                name: {"median": median_of(runs), "runs": runs} for name, runs in by_target.items()
            }
            for clients, by_target in latency.items()
        },
        "targets": {
            name: {"median": median_of(runs), "runs": runs}
            for name, runs in latency[args.connections].items()
        },
    }

    # 6: streaming time to first byte, sequential, from this process pinned to the load core.
    log(f"streaming TTFB: {args.ttfb_requests} sequential requests per target")
    affinity = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {lc})
    try:
        report["ttfb"] = ttfb_series(live, args.ttfb_requests, time_cap_s=max(60.0, args.ttfb_requests * 0.2))
    finally:
        os.sched_setaffinity(0, affinity)

    # 7: memory. The gateway is warm by now (every phase above went through it); read RSS, send
    # --mem-requests more, read it again, sampling along the way.
    memory["rss_before_mem_phase_mb"] = rss_mb(gateway.pid)
    samples = [(0, memory["rss_before_mem_phase_mb"])]
    sent, deadline = 0, time.monotonic() + max(120.0, args.mem_requests / 300)
    chunk_s = min(10.0, args.duration)
    while sent < args.mem_requests and time.monotonic() < deadline:
        result = wrk(gw, chunk_s, args.connections, lc)
        sent += result["requests"]
        samples.append((sent, rss_mb(gateway.pid)))
        if result["non_2xx"] or result["socket_errors"]:
            report["notes"].append(
                f"memory phase: {result['non_2xx']} non-2xx, "
                f"{result['socket_errors']} socket errors in {result['requests']} requests"
            )
    memory.update(
        {
            "mem_phase_requests": sent,
            "rss_after_mem_phase_mb": samples[-1][1],
            "rss_growth_mb": samples[-1][1] - samples[0][1],
            "rss_samples": samples,
            "peak_rss_mb": (status_kb(gateway.pid, "VmHWM") or 0) / 1024,
            "tolerance_mb": RSS_GROWTH_TOLERANCE_MB,
        }
    )
    log(
        f"memory: {memory['rss_before_mem_phase_mb']:.1f} MB -> {memory['rss_after_mem_phase_mb']:.1f} MB "
        f"after {sent} requests"
    )
    report["memory"] = memory

    # Each stage's CPU per request for the production chain, in-process (bench/chain_profile.py).
    report["chain_profile"] = chain_profile(args, sc)

    # Chain stages, telemetry and cache hits, each on gateways of their own.
    stage_and_telemetry_phases(args, servers, report, (mock_fast_port, mock_slow_port), gw_cmd, gw_src)

    # Profile last, so py-spy's sampling cannot disturb any number above.
    if args.profile:
        report["profile"] = profile_gateway(gw, args, lc)

    report["targets"] = {t.name: {"label": t.label, "error": t.error} for t in targets}
    report["gateway_alive_at_end"] = gateway.alive()


def chain_profile(args: argparse.Namespace, core: int) -> dict[str, Any]:
    """bench/chain_profile.py pinned to the server core: own time per stage and the top functions."""
    requests = 1500 if args.quick else 6000
    command = [
        "taskset",
        "-c",
        str(core),
        sys.executable,
        str(BENCH / "chain_profile.py"),
        "--requests",
        str(requests),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": "chain_profile.py did not finish in 600 s"}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    stages: dict[str, float] = {}
    lines = done.stdout.splitlines()
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and line.startswith("  ") and not line.startswith("   "):
            with contextlib.suppress(ValueError):
                stages[parts[0]] = float(parts[1])
    with contextlib.suppress(ValueError, IndexError):
        stages["(whole chain)"] = float(next(x for x in lines if "(whole chain)" in x).split()[-1])
    return {"requests": requests, "own_ms_per_request": stages, "output": done.stdout}


# -- chain stages, telemetry and cache hits (separate gateways) -----------------------------------

# Tenants of the stage-overhead gateway: one stage each, then several together. Limits are far
# out of reach so nothing is rejected; the cache tenants get a new question per request (misses).
# Issue 18's chain: rate limit, budget, input and output guardrails; no cache, no retrieval.
PRODUCTION_CHAIN: dict[str, Any] = {
    "rate_limit": {"enabled": True, "rpm": 1_000_000_000, "tpm": 1_000_000_000_000},
    "budget": {"enabled": True, "daily_usd": 1_000_000_000},
    "input_guardrails": {"enabled": True},
    "output_guardrails": {"enabled": True},
}
PRODUCTION_LABEL = "rag-gateway, production chain"
VERY_HIGH = {
    "rate_limit": {"enabled": True, "rpm": 1_000_000_000, "tpm": 1_000_000_000_000},
    "budget": {"enabled": True, "daily_usd": 1_000_000_000},
}
STAGE_TENANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "off": ("chain off (auth + routing only)", {}),
    "rate_limit": ("rate_limit", {"rate_limit": VERY_HIGH["rate_limit"]}),
    "budget": ("budget", {"budget": VERY_HIGH["budget"]}),
    "input_guardrails": ("input_guardrails (defaults)", {"input_guardrails": {"enabled": True}}),
    "output_guardrails": ("output_guardrails (defaults)", {"output_guardrails": {"enabled": True}}),
    "cache": ("cache miss (exact + semantic: embeds the question)", {"cache": {"enabled": True}}),
    "cache_exact": ("cache miss (exact only)", {"cache": {"enabled": True, "semantic": False}}),
    "limits": ("rate_limit + budget", dict(VERY_HIGH)),
    "all": (
        "all five together",
        {
            **VERY_HIGH,
            "input_guardrails": {"enabled": True},
            "output_guardrails": {"enabled": True},
            "cache": {"enabled": True},
        },
    ),
}
REDIS_TENANTS = ("off", "rate_limit", "budget", "limits")
REDIS_URL = "redis://127.0.0.1:6379/13"
CACHED_QUESTION = "What is the speed limit in Zone B?"
# MiniLM cosine to CACHED_QUESTION between 0.987 and 0.997 (>= the default threshold 0.97), all
# passing the paraphrase check, and no case-only variants, which the uncased model maps to the
# very same vector.
PARAPHRASES = [
    "What is the speed limit for Zone B?",
    "What's the speed limit in Zone B?",
    "What is the speed-limit in Zone B?",
    "What is the speed limit within Zone B?",
    "What is the speed limit inside Zone B?",
    "What is the speed limit of Zone B?",
    "What is the speed limit at Zone B?",
    "What is the speed limit in the Zone B?",
    "What is the speed limit in Zone B, please?",
    "Whats the speed limit in Zone B?",
    "What is the speed limit on Zone B?",
    "What is the speed limit in Zone B??",
]


def write_policies(folder: Path, tenants: dict[str, dict[str, Any]]) -> dict[str, str]:
    """One policy file per tenant (sections as given), each with a fresh key; returns tenant -> key."""
    from gateway.policy import hash_key

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.yaml"):
        old.unlink()
    (folder / "_default.yaml").write_text("models: [bench, bench-slow]\nlog_content: false\n")
    keys = {}
    for tenant, sections in tenants.items():
        keys[tenant] = "sk-bench-" + os.urandom(12).hex()
        policy = {"tenant": tenant, "api_keys": [hash_key(keys[tenant])], **sections}
        (folder / f"{tenant}.yaml").write_text(json.dumps(policy) + "\n")  # JSON is YAML
    return keys


def write_variant_config(
    name: str, port: int, mock_fast: int, mock_slow: int, policies: Path, extra: str
) -> Path:
    config = TMP / f"gateway-{name}.yaml"
    config.write_text(
        f"""# written by bench/run.py ({name})
server: {{host: 127.0.0.1, port: {port}}}
policies_dir: {policies.name}
models:
  - name: bench
    deployments:
      - {{provider: openai_compatible, model: {UPSTREAM_MODEL}, api_base: "http://127.0.0.1:{mock_fast}/v1"}}
  - name: bench-slow
    deployments:
      - {{provider: openai_compatible, model: {UPSTREAM_MODEL}, api_base: "http://127.0.0.1:{mock_slow}/v1"}}
pricing:
  bench: {{input_per_1k: 0.001, output_per_1k: 0.002}}
  bench-slow: {{input_per_1k: 0.001, output_per_1k: 0.002}}
{extra}"""
    )
    return config


def gateway_server(
    name: str, config: Path, args: argparse.Namespace, gw_cmd: list[str], gw_src: Path
) -> Server:
    port = int(re.search(r"port: (\d+)", config.read_text()).group(1))  # type: ignore[union-attr]
    return Server(
        name,
        [*gw_cmd, "serve", "--config", str(config), "--port", str(port), "--workers", "1", "--log-level",
         "warning"],
        port, LOGS, args.server_core, ready_path="/healthz", cwd=gw_src,
        env={"PYTHONPATH": str(gw_src)} if args.gateway_src else None,
    )  # fmt: skip


def ensure_redis() -> tuple[bool, str | None]:
    """(started by us, problem): start a throwaway redis-server when none answers, as .ci/run does."""
    ping = ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"]

    def answers() -> bool:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(ping, capture_output=True, text=True, timeout=5).stdout.strip() == "PONG"
        return False

    if answers():
        return False, None
    if shutil.which("redis-server") is None:
        return False, "redis-server is not installed (apt-get install -y redis-server)"
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "",
         "--appendonly", "no"],
        capture_output=True, timeout=30,
    )  # fmt: skip
    for _ in range(50):
        if answers():
            return True, None
        time.sleep(0.1)
    return False, "redis-server did not answer after start"


def interleaved(
    targets: list[Target], levels: list[tuple[int, float]], runs: int, core: int, what: str
) -> dict[str, dict[str, Any]]:
    """runs x levels x targets wrk runs, targets rotated each run; medians per level and target."""
    raw: dict[int, dict[str, list[dict[str, Any]]]] = {c: {t.name: [] for t in targets} for c, _ in levels}
    for run in range(runs):
        order = targets[run % len(targets) :] + targets[: run % len(targets)]
        for clients, seconds in levels:
            for t in order:
                result = wrk(t, seconds, clients, core)
                raw[clients][t.name].append(result)
                log(
                    f"{what} run {run + 1}/{runs} {clients} clients {t.label}: {result['rps']:.0f} req/s, "
                    f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                    f"CPU {result['cpu_us_per_req'] or 0:.0f} µs/req"
                )
    return {
        str(c): {name: {"median": median_of(rs), "runs": rs} for name, rs in by.items()}
        for c, by in raw.items()
    }


def stage_and_telemetry_phases(
    args: argparse.Namespace,
    servers: list[Server],
    report: dict[str, Any],
    ports: tuple[int, int],
    gw_cmd: list[str],
    gw_src: Path,
) -> None:
    """Chain-stage overhead (memory and Redis state), telemetry overhead and cache-hit latency."""
    lc = args.load_core
    mock_fast, mock_slow = ports
    redis_started, redis_problem = ensure_redis()
    if redis_started:
        report["notes"].append("redis-server was not running; the suite started one on 127.0.0.1:6379")
    if redis_problem:
        report["notes"].append(f"Redis mode not measured: {redis_problem}")
    else:
        subprocess.run(["redis-cli", "-n", "13", "flushdb"], capture_output=True, timeout=30)

    # Memory state, every stage tenant plus the cache-hit tenant; retrieval on so the semantic cache
    # has its embedder (a tenant with the semantic cache would load it anyway).
    stage_keys = write_policies(
        TMP / "policies-stages",
        {**{f"st-{k}": v for k, (_, v) in STAGE_TENANTS.items()}, "cachehit": {"cache": {"enabled": True}}},
    )
    variants: dict[str, tuple[Path, dict[str, str]]] = {
        "stages": (
            write_variant_config(
                "stages", free_port(), mock_fast, mock_slow, TMP / "policies-stages",
                "state: memory\nretrieval: {enabled: true}\n",
            ),
            stage_keys,
        ),
    }  # fmt: skip
    if not redis_problem:
        redis_keys = write_policies(
            TMP / "policies-redis", {f"rd-{k}": STAGE_TENANTS[k][1] for k in REDIS_TENANTS}
        )
        variants["redis"] = (
            write_variant_config(
                "redis", free_port(), mock_fast, mock_slow, TMP / "policies-redis",
                f"state: {REDIS_URL}\nretrieval: {{enabled: false}}\n",
            ),
            redis_keys,
        )  # fmt: skip
    tel_keys = write_policies(TMP / "policies-telemetry", {"bench": {}})
    request_log = TMP / "telemetry-request-log.jsonl"
    request_log.unlink(missing_ok=True)
    dead = free_port()  # nothing listens here: the collector is down
    on = f"  request_log: {{enabled: true, path: {request_log}}}\n  metrics: true\n"
    telemetry = {
        "tel-off": "  traces: false\n  metrics: false\n  request_log: {enabled: false}\n",
        "tel-on": f"  traces: true\n  otlp_endpoint: http://127.0.0.1:{dead}\n"
        f"  otlp_protocol: http/protobuf\n{on}",
        "tel-on-no-traces": f"  traces: false\n{on}",
    }
    for name, block in telemetry.items():
        variants[name] = (
            write_variant_config(
                name, free_port(), mock_fast, mock_slow, TMP / "policies-telemetry",
                f"state: memory\nretrieval: {{enabled: false}}\ntelemetry:\n{block}",
            ),
            tel_keys,
        )  # fmt: skip
    started: dict[str, Server] = {}
    for name, (config, _) in variants.items():
        server = gateway_server(f"rag-gateway-{name}", config, args, gw_cmd, gw_src)
        servers.append(server)
        server.start()
        started[name] = server
    for name, server in list(started.items()):
        try:
            server.wait_ready(120)
        except RuntimeError as exc:
            report["notes"].append(f"gateway variant {name} did not start: {exc}\n{server.log_tail(5)}")
            del started[name]
    time.sleep(1.0)

    def tgt(variant: str, tenant: str, label: str, model: str, lua: Path = LUA) -> Target:
        server = started[variant]
        return Target(f"{variant}:{tenant}", label, server.base, model, variants[variant][1][tenant], server,
                      lua=lua)  # fmt: skip

    # 1. Stage overhead, upstream at zero latency: every tenant sends a new question per request.
    targets: list[Target] = []
    if "stages" in started:
        targets = [
            tgt("stages", f"st-{k}", label, "bench", LUA_UNIQUE) for k, (label, _) in STAGE_TENANTS.items()
        ]
        if "redis" in started:
            targets += [
                tgt("redis", f"rd-{k}", f"Redis: {STAGE_TENANTS[k][0]}", "bench", LUA_UNIQUE)
                for k in REDIS_TENANTS
            ]
        for t in targets:
            t.error = validate(t)
        bad = [t for t in targets if t.error]
        for t in bad:
            report["notes"].append(f"stage phase: {t.label} not measured: {t.error}")
            log(f"stage phase: {t.label} not measured: {t.error}")
        targets = [t for t in targets if not t.error]
    if "stages" in started and targets:
        log(f"stage overhead: {len(targets)} tenants, warm-up")
        for t in targets:
            wrk(t, min(args.warmup, 1.0), args.connections, lc)
        levels = [(args.connections, args.phase_duration), (1, max(2.0, args.phase_duration / 2))]
        report["stages"] = {
            "state": {"memory": "memory", "redis": REDIS_URL if "redis" in started else None},
            "labels": {t.name: t.label for t in targets},
            "levels": interleaved(targets, levels, args.runs, lc, "stages"),
            "seconds": {str(c): d for c, d in levels},
        }

    # 2. Telemetry overhead with the 50 ms mock.
    tel = [
        tgt(name, "bench", label, "bench-slow")
        for name, label in (
            ("tel-off", "telemetry off"),
            ("tel-on", "telemetry on (request log file, metrics, OTLP/HTTP to a dead collector)"),
            ("tel-on-no-traces", "request log file + metrics, tracing off"),
        )
        if name in started
    ]
    tel = [t for t in tel if validate(t) is None]
    if tel:
        log("telemetry overhead, 50 ms upstream")
        for t in tel:
            wrk(t, min(args.warmup, 1.0), args.connections, lc)
        levels = sorted({args.connections, 1}, reverse=True)
        # At 1 client and 50 ms a run has ~20 requests a second: give the p50 enough of them.
        tel_seconds = args.phase_duration if args.quick else max(4.0, args.phase_duration)
        report["telemetry"] = {
            "labels": {t.name: t.label for t in tel},
            "dead_collector": f"http://127.0.0.1:{dead}",
            "upstream_latency_ms": args.latency_ms,
            "levels": interleaved(tel, [(c, tel_seconds) for c in levels], args.runs, lc, "telemetry"),
            "seconds": tel_seconds,
            "request_log_lines": sum(1 for _ in request_log.open()) if request_log.exists() else 0,
        }

    # 3. Cache hits end to end, one client, sequential keep-alive requests.
    if "stages" in started:
        affinity = os.sched_getaffinity(0)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {lc})
        try:
            report["cache_hits"] = cache_hit_latency(started["stages"], stage_keys["cachehit"], args)
        finally:
            os.sched_setaffinity(0, affinity)

    for name, server in started.items():
        report.setdefault("variant_rss_mb", {})[name] = rss_mb(server.pid)
    if redis_started:
        subprocess.run(["redis-cli", "-p", "6379", "shutdown", "nosave"], capture_output=True, timeout=30)


def cache_hit_latency(server: Server, key: str, args: argparse.Namespace) -> dict[str, Any]:
    """Warm one exact request, then time identical ones (exact hits) and paraphrases (semantic hits)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}

    def ask(question: str) -> tuple[float, int, str, str]:
        body = json.dumps(
            {
                "model": "bench",
                "messages": [MESSAGES[0], {"role": "user", "content": question}],
                "max_tokens": 16,
            }
        ).encode()
        start = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body, headers)
        response = conn.getresponse()
        response.read()
        elapsed = (time.perf_counter() - start) * 1000
        return (
            elapsed,
            response.status,
            response.getheader("x-gateway-cache") or "",
            response.getheader("x-gateway-cache-similarity") or "",
        )

    def series(questions: list[str], want: str) -> dict[str, Any]:
        times, other, sims = [], {}, []
        for q in questions:
            elapsed, status, outcome, sim = ask(q)
            if status == 200 and outcome == want:
                times.append(elapsed)
                if sim:
                    sims.append(float(sim))
            else:
                other[f"{status} {outcome or 'no header'}"] = (
                    other.get(f"{status} {outcome or 'no header'}", 0) + 1
                )
        times.sort()
        return {
            "requests": len(questions),
            "hits": len(times),
            "not_hits": other,
            "p50_ms": percentile(times, 50) if times else None,
            "p90_ms": percentile(times, 90) if times else None,
            "p99_ms": percentile(times, 99) if times else None,
            "similarity_min": min(sims) if sims else None,
        }

    # The answer is stored off the response path: ask until the next identical request is a hit.
    first = ask(CACHED_QUESTION)
    for _ in range(50):
        time.sleep(0.1)
        if ask(CACHED_QUESTION)[2] == "hit":
            break
    n = args.cache_requests
    for _ in range(20):  # warm-up, not recorded
        ask(CACHED_QUESTION)
    exact = series([CACHED_QUESTION] * n, "hit")
    for q in PARAPHRASES[:3]:
        ask(q)
    m = max(len(PARAPHRASES), n // 4)
    semantic = series([PARAPHRASES[i % len(PARAPHRASES)] for i in range(m)], "semantic-hit")
    conn.close()
    log(
        f"cache hits: exact p50 {exact['p50_ms']} ms ({exact['hits']}/{n}), "
        f"semantic p50 {semantic['p50_ms']} ms ({semantic['hits']}/{m})"
    )
    return {
        "cached_question": CACHED_QUESTION,
        "first_request": {"ms": first[0], "status": first[1], "cache": first[2]},
        "exact": exact,
        "semantic": semantic,
        "paraphrases": PARAPHRASES,
        "similarity_threshold": "the policy default",
    }


def retrieval_phase(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """bench/retrieval_perf.py in its own process (its RSS is the retrieval work's alone)."""
    out = TMP / "retrieval-perf.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(BENCH / "retrieval_perf.py"), "--json-out", str(out)]
    if args.quick:
        cmd += ["--sizes", "1000", "--queries", "50", "--files", "60"]
    log("retrieval latency and ingestion: " + " ".join(cmd[1:]))
    with (LOGS / "retrieval-perf.log").open("wb") as errlog:
        try:
            done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=errlog, timeout=2400, cwd=ROOT)
            rc = done.returncode
        except subprocess.TimeoutExpired:
            rc = -1
    if rc != 0 or not out.exists():
        report["retrieval"] = {
            "error": f"retrieval_perf.py exited {rc}; see bench/results/logs/retrieval-perf.log"
        }
        return
    report["retrieval"] = json.loads(out.read_text())


def idle_rss_without_retrieval(
    gw_cmd: list[str], gw_src: Path, args: argparse.Namespace, config: Path, report: dict[str, Any]
) -> float | None:
    """Idle RSS of a second gateway whose config turns retrieval off (no embedder, no Chroma).

    The default config loads the embedding model and the vector store at start-up; this shows
    what a gateway that only proxies costs. Started, read, and stopped before any load.
    """
    variant = config.with_name("gateway-no-retrieval.yaml")
    variant.write_text(config.read_text() + "retrieval: {enabled: false}\n")
    port = free_port()
    server = Server(
        "rag-gateway-no-retrieval",
        [*gw_cmd, "serve", "--config", str(variant), "--port", str(port), "--workers", "1", "--log-level",
         "warning"],
        port, LOGS, args.server_core, ready_path="/healthz", cwd=gw_src,
        env={"PYTHONPATH": str(gw_src)} if args.gateway_src else None,
    )  # fmt: skip
    try:
        server.start()
        server.wait_ready(60)
        time.sleep(1.0)
        return rss_mb(server.pid)
    except RuntimeError as exc:
        report["notes"].append(f"gateway with `retrieval: {{enabled: false}}` did not start: {exc}")
        return None
    finally:
        server.stop()


def profile_gateway(gw: Target, args: argparse.Namespace, core: int) -> dict[str, Any]:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        return {"error": "py-spy not installed (pip install py-spy)"}
    assert gw.server is not None
    out = RESULTS / "profile-gateway.txt"
    log(f"profiling the gateway for {args.profile_seconds:g} s under load (py-spy)")
    spy = subprocess.Popen(
        [
            "taskset",
            "-c",
            str(core),
            pyspy,
            "record",
            "--pid",
            str(gw.server.pid),
            "--rate",
            "200",
            "--duration",
            f"{args.profile_seconds:g}",
            "--format",
            "raw",
            "--output",
            str(out),
            "--nonblocking",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(LOGS / "py-spy.log").open("wb"),
    )
    time.sleep(0.5)
    load = wrk(gw, args.profile_seconds, args.connections, core)
    try:
        spy.wait(args.profile_seconds + 60)
    except subprocess.TimeoutExpired:
        spy.terminate()
        return {"error": "py-spy did not finish"}
    if spy.returncode != 0 or not out.exists():
        return {"error": f"py-spy exited {spy.returncode}: {(LOGS / 'py-spy.log').read_text()[-400:]}"}
    summary = profile_summary.summarise(out.read_text())
    summary["requests_during_profile"] = load["requests"]
    summary["rps_under_profiler"] = load["rps"]
    summary["file"] = str(out.relative_to(ROOT))
    return summary


# -- environment, logs, output -------------------------------------------------------------------


def environment() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), ""
        )
    versions = {}
    for dist in ("uvicorn", "uvloop", "httptools", "starlette", "aiohttp", "httpx", "orjson"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[dist] = importlib.metadata.version(dist)
    wrk_version = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "gateway", "middleware"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "wrk": wrk_version.strip(),
        "packages": versions,
        "commit": commit + (" (gateway/middleware modified)" if dirty else ""),
    }


LOG_PROBLEM = re.compile(r"\b(ERROR|CRITICAL|Traceback|Exception)\b")


def scan_logs(servers: list[Server]) -> dict[str, Any]:
    """Problem lines in each server's output (errors under load are part of the result)."""
    out = {}
    for server in servers:
        try:
            lines = server.log_path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        problems = [ln for ln in lines if LOG_PROBLEM.search(ln)]
        out[server.name] = {"lines": len(lines), "problem_lines": len(problems), "first": problems[:5]}
    return out


def write_outputs(args: argparse.Namespace, report: dict[str, Any]) -> None:
    import report as report_md

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    markdown = report_md.render(report)
    (RESULTS / "latest.md").write_text(markdown)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"run-{stamp}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    if not args.no_commit_copy:
        (BENCH / "RESULTS.md").write_text(markdown)
    print(markdown)
    log(
        f"wrote {RESULTS.relative_to(ROOT)}/latest.json, latest.md"
        + ("" if args.no_commit_copy else " and bench/RESULTS.md")
    )


if __name__ == "__main__":
    sys.exit(main())

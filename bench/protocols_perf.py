"""What the protocol translation costs: the same question asked through chat completions, the
Responses API, Anthropic Messages and legacy completions, against one gateway in front of a chat
upstream (so every protocol but chat is translated both ways).

    python bench/protocols_perf.py            # 8 s wrk runs, 3,000 serial requests per protocol
    python bench/protocols_perf.py --quick    # smoke run

Measured, with the gateway pinned to one core and the mock upstream + load on the other:
- added p50 (one client, JSON): each protocol's median latency minus chat's, requests interleaved
  round-robin so drift hits every protocol alike;
- streaming time to first byte: each protocol through the gateway minus a stream straight from
  the mock upstream;
- throughput (wrk, 8 connections): each protocol through the gateway, and chat through the thin
  aiohttp pass-through (bench/passthrough_aiohttp.py) in the same run.
Targets (issue 14): added p50 <= 0.2 ms, TTFB within 2 ms of direct, chat >= 0.6x the thin proxy.
Output: bench/results/protocols.json and bench/PROTOCOLS_RESULTS.md.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from procs import Server, free_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
TMP = RESULTS / "tmp-protocols"
LOGS = RESULTS / "logs"
QUESTION = "Say hello in one short sentence."
PROTOCOLS: dict[str, tuple[str, dict[str, Any]]] = {
    "chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}),
    "responses": ("/v1/responses", {"input": QUESTION, "max_output_tokens": 16, "store": False}),
    "messages": ("/v1/messages", {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 16}),
    "completions": ("/v1/completions", {"prompt": QUESTION, "max_tokens": 16}),
}


def log(message: str) -> None:
    print(f"[protocols {time.strftime('%H:%M:%S')}] {message}", flush=True)


def body(protocol: str, model: str, stream: bool = False) -> bytes:
    payload = {"model": model, **PROTOCOLS[protocol][1]}
    if stream:
        payload["stream"] = True
    return json.dumps(payload).encode()


def write_config(port: int, mock_port: int, key: str, builtin_switch: bool = True) -> Path:
    from gateway.policy import hash_key

    policies = TMP / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "_default.yaml").write_text("models: [bench]\nlog_content: false\n")
    (policies / "bench.yaml").write_text(f'tenant: bench\napi_keys: ["{hash_key(key)}"]\n')
    config = TMP / "gateway.yaml"
    config.write_text(
        f"""# written by bench/protocols_perf.py
server: {{host: 127.0.0.1, port: {port}}}
policies_dir: policies
{"builtin_models: false" if builtin_switch else ""}
models:
  - name: bench
    deployments:
      - {{provider: openai_compatible, model: gpt-4o-mini, api_base: "http://127.0.0.1:{mock_port}/v1"}}
state: memory
telemetry: {{request_log: {{enabled: false}}}}
"""
    )
    return config


class Client:
    """One keep-alive connection; times a request to its last byte, or to its first body byte."""

    def __init__(self, port: int, key: str) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    def post(self, path: str, payload: bytes) -> float:
        started = time.perf_counter()
        self.conn.request("POST", path, payload, self.headers)
        response = self.conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"POST {path}: HTTP {response.status}")
        return elapsed

    def first_byte(self, path: str, payload: bytes) -> float:
        started = time.perf_counter()
        self.conn.request("POST", path, payload, self.headers)
        response = self.conn.getresponse()
        response.read1(65536)
        elapsed = time.perf_counter() - started
        response.read()
        if response.status != 200:
            raise RuntimeError(f"POST {path} (stream): HTTP {response.status}")
        return elapsed


def serial_latencies(port: int, key: str, requests: int, stream: bool) -> dict[str, list[float]]:
    client = Client(port, key)
    times: dict[str, list[float]] = {p: [] for p in PROTOCOLS}
    payloads = {p: body(p, "bench", stream) for p in PROTOCOLS}
    for i in range(requests * len(PROTOCOLS)):
        protocol = list(PROTOCOLS)[i % len(PROTOCOLS)]
        path = PROTOCOLS[protocol][0]
        timed = client.first_byte if stream else client.post
        elapsed = timed(path, payloads[protocol])
        if i >= 40 * len(PROTOCOLS):  # after a warm-up
            times[protocol].append(elapsed * 1000)
    return times


def direct_ttfb(mock_port: int, requests: int) -> list[float]:
    client = Client(mock_port, "")
    payload = body("chat", "gpt-4o-mini", stream=True)
    return [client.first_byte("/v1/chat/completions", payload) * 1000 for _ in range(requests)][40:]


def wrk(url: str, key: str, payload: bytes, seconds: float, core: int) -> dict[str, Any]:
    body_file = TMP / f"body-{abs(hash((url, payload)))}.json"
    body_file.write_bytes(payload)
    cmd = ["taskset", "-c", str(core), "wrk", "-t1", "-c8", f"-d{seconds:g}s", "--latency"]
    cmd += ["-s", str(ROOT / "bench" / "post.lua"), url]
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_KEY": key}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 60)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed: {done.stderr.strip() or done.stdout[-500:]}")
    raw = json.loads(line[len("BENCH_JSON ") :])
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["latency_us"]["p50"] / 1000,
        "non_2xx": raw["errors"]["status"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--load-core", type=int, default=1)
    parser.add_argument("--gateway-src", help="run the gateway from this checkout (compare commits)")
    parser.add_argument("--only-chat", action="store_true", help="chat throughput vs the thin proxy only")
    args = parser.parse_args()
    requests, seconds = (300, 3.0) if args.quick else (3000, 8.0)
    for folder in (TMP, LOGS):
        folder.mkdir(parents=True, exist_ok=True)
    sc, lc, py = args.server_core, args.load_core, sys.executable
    key = "sk-bench-" + os.urandom(12).hex()
    mock_port, gw_port, thin_port = free_port(), free_port(), free_port()
    src = Path(args.gateway_src).resolve() if args.gateway_src else ROOT
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONPATH": str(src)}
    mock = Server(
        "protocols-mock",
        [py, str(ROOT / "tests" / "mock_upstream.py"), "--port", str(mock_port)],
        mock_port,
        LOGS,
        lc,
    )
    config = write_config(gw_port, mock_port, key, builtin_switch=not args.gateway_src)
    gateway = Server(
        "protocols-gateway",
        [py, "-m", "gateway", "serve", "--config", str(config), "--workers", "1", "--log-level", "warning"],
        gw_port,
        LOGS,
        sc,
        env=env,
        ready_path="/healthz",
        cwd=src,
    )
    thin = Server(
        "protocols-thin",
        [py, "-m", "uvicorn", "bench.passthrough_aiohttp:app", "--port", str(thin_port), "--loop", "uvloop",
         "--http", "httptools", "--workers", "1", "--no-access-log", "--log-level", "warning"],
        thin_port,
        LOGS,
        sc,
        env={"BENCH_UPSTREAM": f"http://127.0.0.1:{mock_port}/v1"},
        cwd=ROOT,
    )  # fmt: skip
    servers = [mock, gateway, thin]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(60)
        if args.only_chat:
            chat = wrk(
                f"http://127.0.0.1:{gw_port}/v1/chat/completions", key, body("chat", "bench"), seconds, lc
            )
            thin_only = wrk(
                f"http://127.0.0.1:{thin_port}/v1/chat/completions",
                "",
                body("chat", "gpt-4o-mini"),
                seconds,
                lc,
            )
            ratio = chat["rps"] / thin_only["rps"]
            print(f"chat {chat['rps']:.0f} RPS, thin {thin_only['rps']:.0f} RPS: {ratio:.2f}x")
            return
        log("servers ready; serial JSON latency")
        json_times = serial_latencies(gw_port, key, requests, stream=False)
        log("serial streaming time to first byte")
        stream_times = serial_latencies(gw_port, key, requests // 2, stream=True)
        direct = direct_ttfb(mock_port, requests // 2)
        log("throughput (wrk, 8 connections)")
        throughput = {
            p: wrk(f"http://127.0.0.1:{gw_port}{PROTOCOLS[p][0]}", key, body(p, "bench"), seconds, lc)
            for p in PROTOCOLS
        }
        thin_rps = wrk(
            f"http://127.0.0.1:{thin_port}/v1/chat/completions", "", body("chat", "gpt-4o-mini"), seconds, lc
        )
    finally:
        for server in servers:
            server.stop()

    chat_p50 = statistics.median(json_times["chat"])
    direct_p50 = statistics.median(direct)
    rows = {}
    for protocol in PROTOCOLS:
        p50 = statistics.median(json_times[protocol])
        ttfb = statistics.median(stream_times[protocol])
        rows[protocol] = {
            "json_p50_ms": round(p50, 3),
            "added_p50_vs_chat_ms": round(p50 - chat_p50, 3),
            "stream_ttfb_p50_ms": round(ttfb, 3),
            "ttfb_over_direct_ms": round(ttfb - direct_p50, 3),
            "rps_8_clients": round(throughput[protocol]["rps"]),
            "non_2xx": throughput[protocol]["non_2xx"],
        }
    report = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "quick": args.quick,
        "direct_stream_ttfb_p50_ms": round(direct_p50, 3),
        "thin_aiohttp_rps": round(thin_rps["rps"]),
        "chat_vs_thin": round(throughput["chat"]["rps"] / thin_rps["rps"], 3),
        "protocols": rows,
    }
    (RESULTS / "protocols.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Protocol translation cost",
        "",
        f"`python bench/protocols_perf.py{' --quick' if args.quick else ''}`, {report['when']}. One gateway "
        "worker on one core in front of a chat upstream (mock, 0 ms): every protocol but chat is translated "
        "both ways.",
        "",
        "| protocol | JSON p50, 1 client | added vs chat | stream TTFB p50 | TTFB over direct "
        "| RPS, 8 clients |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for protocol, row in rows.items():
        lines.append(
            f"| {protocol} | {row['json_p50_ms']:.3f} ms | {row['added_p50_vs_chat_ms']:+.3f} ms | "
            f"{row['stream_ttfb_p50_ms']:.3f} ms | {row['ttfb_over_direct_ms']:+.3f} ms "
            f"| {row['rps_8_clients']:,} |"
        )
    lines += [
        "",
        f"Direct stream from the mock: TTFB p50 {direct_p50:.3f} ms. Thin aiohttp pass-through (chat): "
        f"{report['thin_aiohttp_rps']:,} RPS; gateway chat is {report['chat_vs_thin']:.2f}x of it.",
        "",
        "Targets: added p50 <= 0.2 ms, TTFB within 2 ms of direct, chat >= 0.6x the thin pass-through.",
        "",
    ]
    (ROOT / "bench" / "PROTOCOLS_RESULTS.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Render bench/run.py's result dict as the markdown written to bench/RESULTS.md."""

from __future__ import annotations

from typing import Any

ORDER = ("direct", "gateway", "gateway_production", "passthrough_httpx", "passthrough_aiohttp", "litellm")


def _f(value: float | None, digits: int = 2, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{suffix}"


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**yes**" if ok else "**NO**")


def targets_table(r: dict[str, Any]) -> tuple[list[str], dict[str, bool | None]]:
    thr = {k: v["median"] for k, v in r.get("throughput", {}).items()}
    lat = {k: v["median"] for k, v in r.get("latency", {}).get("targets", {}).items()}
    ttfb = r.get("ttfb", {})
    mem = r.get("memory", {})
    gw = thr.get("gateway", {}).get("rps")
    lite = thr.get("litellm", {}).get("rps")
    pts = {k: thr[k]["rps"] for k in ("passthrough_httpx", "passthrough_aiohttp") if k in thr}
    fastest = max(pts, key=lambda k: pts[k]) if pts else None
    rows, met = [], {}

    ratio = gw / lite if gw and lite else None
    met["vs_litellm"] = None if ratio is None else ratio >= 10
    rows.append(
        (
            "Throughput vs LiteLLM proxy (same run)",
            ">= 10x",
            "n/a (LiteLLM not measured)"
            if ratio is None
            else f"{ratio:.1f}x ({gw:,.0f} vs {lite:,.0f} req/s)",
            met["vs_litellm"],
        )
    )
    share = gw / pts[fastest] if gw and fastest else None
    met["vs_passthrough"] = None if share is None else share >= 0.5
    rows.append(
        (
            "Throughput vs fastest thin pass-through",
            ">= 0.5x",
            "n/a"
            if share is None
            else f"{share:.2f}x of {fastest.replace('passthrough_', '')} ({pts[fastest]:,.0f} req/s)",
            met["vs_passthrough"],
        )
    )
    d50 = d99 = None
    if "gateway" in lat and "direct" in lat:
        d50 = lat["gateway"]["p50_ms"] - lat["direct"]["p50_ms"]
        d99 = lat["gateway"]["p99_ms"] - lat["direct"]["p99_ms"]
    met["added_p50"] = None if d50 is None else d50 <= 1.0
    met["added_p99"] = None if d99 is None else d99 <= 3.0
    rows.append(
        ("Added latency p50 (8 clients, upstream 50 ms)", "<= 1 ms", _f(d50, 2, " ms"), met["added_p50"])
    )
    rows.append(
        ("Added latency p99 (8 clients, upstream 50 ms)", "<= 3 ms", _f(d99, 2, " ms"), met["added_p99"])
    )
    t50 = None
    if ttfb.get("gateway", {}).get("p50_ms") is not None and ttfb.get("direct", {}).get("p50_ms") is not None:
        t50 = ttfb["gateway"]["p50_ms"] - ttfb["direct"]["p50_ms"]
    met["ttfb"] = None if t50 is None else t50 <= 2.0
    rows.append(("Streaming TTFB above direct (p50)", "<= 2 ms", _f(t50, 2, " ms"), met["ttfb"]))
    idle = mem.get("idle_rss_mb")
    met["idle_rss"] = None if idle is None else idle <= 150
    rows.append(("Gateway RSS idle after start", "<= 150 MB", _f(idle, 1, " MB"), met["idle_rss"]))
    growth = mem.get("rss_growth_mb")
    tol = mem.get("tolerance_mb", 5.0)
    met["rss_growth"] = None if growth is None else growth <= tol
    rows.append(
        (
            f"RSS growth over {mem.get('mem_phase_requests', 0):,} requests after warm-up",
            f"none (<= {tol:g} MB noise)",
            "n/a"
            if growth is None
            else f"{growth:+.1f} MB ({mem['rss_before_mem_phase_mb']:.1f} → "
            f"{mem['rss_after_mem_phase_mb']:.1f} MB)",
            met["rss_growth"],
        )
    )
    rows += production_targets(r, met)
    rows += phase_targets(r)
    lines = ["| target | goal | measured | met |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {_met(d)} |" for a, b, c, d in rows]
    return lines, met


def production_targets(
    r: dict[str, Any], met: dict[str, bool | None]
) -> list[tuple[str, str, str, bool | None]]:
    """Issue 18: the production chain against the thin aiohttp pass-through and LiteLLM, same run."""
    thr = {k: v["median"]["rps"] for k, v in r.get("throughput", {}).items()}
    levels = r.get("latency", {}).get("levels", {})
    prod, thin, lite = thr.get("gateway_production"), thr.get("passthrough_aiohttp"), thr.get("litellm")
    rows: list[tuple[str, str, str, bool | None]] = []
    share = prod / thin if prod and thin else None
    met["production_vs_thin"] = None if share is None else share >= 0.6
    rows.append(
        (
            "Production chain: throughput vs thin aiohttp pass-through",
            ">= 0.6x",
            "n/a" if share is None else f"{share:.2f}x ({prod:,.0f} vs {thin:,.0f} req/s)",
            met["production_vs_thin"],
        )
    )
    ratio = prod / lite if prod and lite else None
    met["production_vs_litellm"] = None if ratio is None else ratio >= 30
    rows.append(
        (
            "Production chain: throughput vs LiteLLM proxy",
            ">= 30x",
            "n/a (LiteLLM not measured)" if ratio is None else f"{ratio:.1f}x",
            met["production_vs_litellm"],
        )
    )
    for clients, pct, goal in (("8", "p50_ms", 1.0), ("8", "p99_ms", 3.0), ("1", "p50_ms", 0.5)):
        by = {k: v["median"] for k, v in levels.get(clients, {}).items()}
        over = None
        if "gateway_production" in by and "passthrough_aiohttp" in by:
            over = by["gateway_production"][pct] - by["passthrough_aiohttp"][pct]
        key = f"production_{clients}c_{pct}"
        met[key] = None if over is None else over <= goal
        rows.append(
            (
                f"Production chain: added {pct[:3]} over the thin pass-through ({clients} client"
                f"{'s' if clients != '1' else ''}, upstream 50 ms)",
                f"<= {goal:g} ms",
                _f(over, 2, " ms"),
                met[key],
            )
        )
    return rows


def chain_profile_section(r: dict[str, Any]) -> list[str]:
    profile = r.get("chain_profile")
    if not profile:
        return []
    out = ["## Production chain: each stage's CPU per request (bench/chain_profile.py)", ""]
    if profile.get("error"):
        return [*out, f"Not measured: {profile['error']}", ""]
    out += ["| stage | own ms per request |", "| --- | ---: |"]
    out += [f"| {name} | {ms:.3f} |" for name, ms in profile["own_ms_per_request"].items()]
    out += ["", "Sampled profile, top functions per stage:", "", "```", profile["output"].rstrip(), "```", ""]
    return out


def render(r: dict[str, Any]) -> str:
    env, args = r["environment"], r["args"]
    labels = {k: v["label"] for k, v in r.get("targets", {}).items()}
    out = ["# rag-gateway performance benchmark", ""]
    out.append(
        f"Generated by `python bench/run.py{' --quick' if args.get('quick') else ''}"
        f"{' --profile' if args.get('profile') else ''}` on {env['date']} (commit {env['commit']}). "
        f"{env['cpu']}, {env['cores']} cores, Python {env['python']}, {env['wrk']}; "
        f"LiteLLM {env.get('litellm', 'not installed')}."
    )
    out.append("")
    out.append(
        f"Server under test: one process, one worker, pinned to core {args['server_core']}; mock upstream "
        f"(tests/mock_upstream.py, aiohttp) and wrk (1 thread) pinned to core {args['load_core']}. "
        f"Loopback only. Each figure is the median of {args['runs']} runs of {args['duration']:g} s "
        f"after {args['warmup']:g} s of warm-up per target; {args['connections']} connections; "
        "non-streaming chat completion, ~150-byte request, ~330-byte response."
    )
    out.append("")
    out.append("## Targets")
    out.append("")
    lines, _ = targets_table(r)
    out += lines
    out.append("")

    thr = r.get("throughput", {})
    if thr:
        direct = thr.get("direct", {}).get("median", {}).get("rps")
        out += [
            "## Throughput (upstream answers at once)",
            "",
            "| target | req/s | vs direct | p50 ms | p99 ms | CPU µs/req | server CPU % | other load % "
            "| errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in ORDER:
            if name not in thr:
                continue
            m = thr[name]["median"]
            ratio = f"{m['rps'] / direct:.2f}x" if direct else "n/a"
            cpu = _f(m["cpu_us_per_req"], 0)
            if name == "direct":
                cpu += " (mock)"
            out.append(
                f"| {labels.get(name, name)} | {m['rps']:,.0f} | {ratio} | {m['p50_ms']:.2f} | "
                f"{m['p99_ms']:.2f} | {cpu} | {_f(m.get('server_cpu_pct'), 0)} | "
                f"{_f(m.get('foreign_cpu_pct_max'), 0)} | {m['non_2xx'] + m['socket_errors']} |"
            )
        out.append("")
        out.append(
            "CPU µs/req = the server process's user+system CPU time during the run divided by the "
            "requests it served (for the direct row: the mock's own cost). errors = non-2xx + "
            "socket errors over all runs. server CPU % = share of one core the server used (below 100: "
            "it was not the bottleneck; the round trips through the mock and wrk on the other core "
            "were). other load % = the most CPU (in % of one core) that processes outside the "
            "benchmark used during any of the runs. The direct row is bounded by the single-core "
            "Python mock."
        )
        out.append("")

    lat = r.get("latency", {})
    levels = lat.get("levels") or ({str(args["connections"]): lat["targets"]} if lat.get("targets") else {})
    if levels:
        out += [
            f"## Added latency at light load (upstream latency {lat['upstream_latency_ms']:g} ms)",
            "",
            "| clients | target | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | errors |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for clients, by_target in levels.items():
            d = by_target.get("direct", {}).get("median")
            for name in ORDER:
                if name not in by_target:
                    continue
                m = by_target[name]["median"]
                a50 = "—" if name == "direct" or not d else f"{m['p50_ms'] - d['p50_ms']:+.2f}"
                a99 = "—" if name == "direct" or not d else f"{m['p99_ms'] - d['p99_ms']:+.2f}"
                out.append(
                    f"| {clients} | {labels.get(name, name)} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | "
                    f"{m['p99_ms']:.2f} | {a50} | {a99} | {m['non_2xx'] + m['socket_errors']} |"
                )
        out.append("")
        out.append(
            "The pass-through here is a second starlette + aiohttp instance pointed at the slow mock. "
            f"With {args['connections']} wrk clients behind the same fixed upstream delay the requests "
            "stay in step and reach the proxy in bursts, so each one also waits for the CPU time of the "
            "others in its burst; the 1-client rows show the per-request cost without that queueing."
        )
        out.append("")

    ttfb = r.get("ttfb", {})
    if ttfb:
        d50 = ttfb.get("direct", {}).get("p50_ms")
        out += [
            "## Streaming time to first byte (sequential requests, keep-alive)",
            "",
            "| target | requests | p50 ms | p90 ms | p99 ms | p50 above direct | failures |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in ORDER:
            if name not in ttfb:
                continue
            m = ttfb[name]
            if not m.get("requests"):
                out.append(f"| {labels.get(name, name)} | 0 | n/a | n/a | n/a | n/a | {m.get('failures')} |")
                continue
            above = "—" if name == "direct" or d50 is None else f"{m['p50_ms'] - d50:+.3f} ms"
            out.append(
                f"| {labels.get(name, name)} | {m['requests']} | {m['p50_ms']:.3f} | {m['p90_ms']:.3f} | "
                f"{m['p99_ms']:.3f} | {above} | {m['failures']} |"
            )
        reported = ttfb.get("gateway", {}).get("self_reported_overhead_p50_ms")
        out.append("")
        out.append(
            "TTFB: from sending the request to the first bytes of the response body (the first SSE "
            "event), one request at a time."
            + (
                f" The gateway's own `x-gateway-overhead-ms` header "
                f"reported a median of {reported:.3f} ms on these requests."
                if reported
                else ""
            )
        )
        out.append("")

    mem = r.get("memory", {})
    if mem:
        out += [
            "## Gateway memory (VmRSS)",
            "",
            "| point | RSS MB |",
            "| --- | ---: |",
            f"| idle, after start | {mem['idle_rss_mb']:.1f} |",
            f"| idle, after start, config with `retrieval: {{enabled: false}}` "
            f"| {_f(mem.get('idle_rss_no_retrieval_mb'), 1)} |",
            f"| after the warm-up | {mem.get('rss_after_warmup_mb', 0):.1f} |",
            f"| after every phase above (start of memory phase) | {mem['rss_before_mem_phase_mb']:.1f} |",
            f"| after {mem['mem_phase_requests']:,} more requests | {mem['rss_after_mem_phase_mb']:.1f} |",
            f"| peak (VmHWM) | {mem['peak_rss_mb']:.1f} |",
            "",
        ]
        trail = ", ".join(f"{n // 1000}k: {v:.1f}" for n, v in mem.get("rss_samples", []))
        out += [f"RSS along the memory phase (requests: MB): {trail}.", ""]

    out += chain_profile_section(r)
    out += phase_sections(r)

    prof = r.get("profile")
    if prof:
        out += ["## Gateway profile under load (py-spy, 200 Hz)", ""]
        if prof.get("error"):
            out += [f"Profile not taken: {prof['error']}", ""]
        else:
            out.append(
                f"{prof['samples']:,} samples over {prof['requests_during_profile']:,} requests "
                f"({prof['rps_under_profiler']:,.0f} req/s while sampled). Self time by layer: "
                + ", ".join(f"{name} {pct}%" for name, pct in prof["self_by_layer_pct"])
                + "."
            )
            out += ["", "| gateway function (inclusive) | % of samples |", "| --- | ---: |"]
            out += [f"| `{name}` | {pct} |" for name, pct in prof["gateway_inclusive_pct"][:12]]
            out += ["", "| hottest leaf functions (self) | % of samples |", "| --- | ---: |"]
            out += [f"| `{name}` | {pct} |" for name, pct in prof["top_self_pct"][:12]]
            out.append("")

    problems = [
        f"- {labels.get(k, k)}: not measured: {v['error']}"
        for k, v in r.get("targets", {}).items()
        if v.get("error")
    ]
    for name, info in r.get("logs", {}).items():
        if info["problem_lines"]:
            expected = (
                " (expected: this gateway exports traces to a port where nothing listens)"
                if name == "rag-gateway-tel-on"
                else ""
            )
            problems.append(
                f"- `{name}` log: {info['problem_lines']} error lines{expected}, "
                f"first: `{info['first'][0][:200]}`"
            )
    problems += [f"- {note}" for note in r.get("notes", [])]
    foreign = [
        m["median"].get("foreign_cpu_pct_max", 0.0)
        for section in (r.get("throughput", {}), *r.get("latency", {}).get("levels", {}).values())
        for m in section.values()
    ]
    if foreign and max(foreign) > 25:
        problems.append(
            f"- Shared machine: processes outside the benchmark used up to {max(foreign):.0f}% of a core "
            "during some runs (see 'other load %'). They compete with the server under test, so "
            "absolute req/s and tail latencies are pessimistic and vary run to run; ratios between "
            "targets measured in the same interleaved runs are the more reliable figures."
        )
    out += ["## Errors and notes", ""]
    out += problems or ["- No target answered an error, and no server logged one."]
    out += ["", f"Wall time {r.get('wall_s', 0):.0f} s. Raw numbers: `bench/results/latest.json`.", ""]
    return "\n".join(out)


# -- stage, telemetry, cache-hit and retrieval phases ---------------------------------------------


def _lvl(section: dict[str, Any], clients: int | str) -> dict[str, dict[str, Any]]:
    return {k: v["median"] for k, v in section.get("levels", {}).get(str(clients), {}).items()}


def _delta(by: dict[str, dict[str, Any]], name: str, base: str, key: str) -> float | None:
    if name not in by or base not in by or by[name].get(key) is None or by[base].get(key) is None:
        return None
    return by[name][key] - by[base][key]


def phase_targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """Rows for the targets table from the stage, telemetry, cache and retrieval phases."""
    rows: list[tuple[str, str, str, bool | None]] = []
    conns = r["args"]["connections"]
    st = r.get("stages", {})
    for clients in (conns, 1):
        d = _delta(_lvl(st, clients), "redis:rd-limits", "redis:rd-off", "p50_ms")
        rows.append(
            (
                f"Redis rate_limit + budget, added p50 ({clients} client{'s' if clients > 1 else ''}, "
                "upstream at once)",
                "<= 1 ms",
                _f(d, 3, " ms"),
                None if d is None else d <= 1.0,
            )
        )
    tel = r.get("telemetry", {})
    for clients in (conns, 1):
        by = _lvl(tel, clients)
        d = _delta(by, "tel-on:bench", "tel-off:bench", "p50_ms")
        rows.append(
            (
                f"Telemetry all on vs all off, added p50 ({clients} client{'s' if clients > 1 else ''}, "
                "upstream 50 ms)",
                "<= 0.3 ms",
                _f(d, 3, " ms"),
                None if d is None else d <= 0.3,
            )
        )
    for clients in (conns, 1):
        by = _lvl(tel, clients)
        d = _delta(by, "tel-on:bench", "tel-on-no-traces:bench", "p50_ms")
        errors = by.get("tel-on:bench", {}).get("non_2xx", 0) + by.get("tel-on:bench", {}).get(
            "socket_errors", 0
        )
        rows.append(
            (
                f"Tracing to a dead collector vs tracing off, p50 ({clients} "
                f"client{'s' if clients > 1 else ''})",
                "no change (<= 0.2 ms, no errors)",
                "n/a" if d is None else f"{d:+.3f} ms, {errors} errors",
                None if d is None else (d <= 0.2 and errors == 0),
            )
        )
    ch = r.get("cache_hits", {})
    for kind, goal in (("exact", 2.0), ("semantic", 10.0)):
        m = ch.get(kind, {})
        p50 = m.get("p50_ms")
        rows.append(
            (
                f"Cache {'exact' if kind == 'exact' else 'semantic'} hit, end to end p50 (1 client)",
                f"<= {goal:g} ms",
                "n/a" if p50 is None else f"{p50:.2f} ms ({m['hits']}/{m['requests']} hits)",
                None if p50 is None else (p50 <= goal and m["hits"] == m["requests"]),
            )
        )
    ret = r.get("retrieval", {})
    lat = {row["chunks"]: row for row in ret.get("latency", [])}
    biggest = max(lat) if lat else None
    if biggest is not None:
        row = lat[biggest]
        rows.append(
            (
                f"Retrieval stage p50 at {biggest:,} chunks (embed + dense + BM25 + fusion)",
                "<= 20 ms at 100k",
                f"{row['p50_ms']:.1f} ms (p95 {row['p95_ms']:.1f})",
                (row["p50_ms"] <= 20.0) if biggest >= 100_000 else None,
            )
        )
    ing = ret.get("ingestion", {})
    if ing.get("pipeline_vs_raw") is not None:
        rows.append(
            (
                "Ingestion pipeline vs raw embedder throughput",
                ">= 80%",
                f"{100 * ing['pipeline_vs_raw']:.0f}% ({ing['pipeline_chunks_per_s']:.1f} vs "
                f"{ing['raw_chunks_per_s']:.1f} chunks/s)",
                ing["pipeline_vs_raw"] >= 0.8,
            )
        )
    return rows


def phase_sections(r: dict[str, Any]) -> list[str]:
    out: list[str] = []
    conns = r["args"]["connections"]
    st = r.get("stages")
    if st:
        labels = st.get("labels", {})
        secs = st.get("seconds", {})
        out += [
            "## Chain stages, one at a time and together (upstream answers at once)",
            "",
            f"One gateway (one worker, pinned), one tenant per row; `state: memory` unless the row says "
            f"Redis (`state: {st['state'].get('redis')}`, its own gateway, compared with its own "
            "chain-off tenant). Every request asks a new question (`post_unique.lua`), so the cache "
            "tenants always miss. Limits and budgets are far out of reach. "
            f"{secs.get(str(conns), 0):g} s runs at {conns} connections, {secs.get('1', 0):g} s at 1.",
            "",
            f"| tenant | req/s ({conns} conn) | p50 ms | p99 ms | CPU µs/req | added CPU µs/req | "
            f"added p50 µs ({conns} conn) | p50 ms (1 client) | added p50 µs (1 client) | errors |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        by8, by1 = _lvl(st, conns), _lvl(st, 1)
        for name, label in labels.items():
            if name not in by8:
                continue
            base = "redis:rd-off" if name.startswith("redis:") else "stages:st-off"
            m, m1 = by8[name], by1.get(name, {})
            is_base = name == base

            def us(v: float | None, is_base: bool = is_base) -> str:
                return "—" if is_base else ("n/a" if v is None else f"{1000 * v:+,.0f}")

            dcpu = _delta(by8, name, base, "cpu_us_per_req")
            errors = m["non_2xx"] + m["socket_errors"] + m1.get("non_2xx", 0) + m1.get("socket_errors", 0)
            out.append(
                f"| {label} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                f"{_f(m['cpu_us_per_req'], 0)} | {'—' if is_base else _f(dcpu, 0)} | "
                f"{us(_delta(by8, name, base, 'p50_ms'))} | {_f(m1.get('p50_ms'), 3)} | "
                f"{us(_delta(by1, name, base, 'p50_ms'))} | {errors} |"
            )
        caches = {
            labels[n]: m["cache"] for n, m in by8.items() if m.get("cache") and "cache" in labels.get(n, "")
        }
        out.append("")
        out.append(
            "added = this tenant minus the chain-off tenant of the same gateway (medians of runs). "
            f"At {conns} connections the server is saturated, so added p50 ≈ {conns} x the added "
            "per-request cost (each request queues behind the others); the 1-client column is the "
            "latency one request pays. "
            + "; ".join(
                f"{label}: {c['hit']} exact / {c['semantic_hit']} semantic hits, {c['miss_or_bypass']} misses"
                for label, c in caches.items()
            )
            + "."
        )
        out.append("")

    tel = r.get("telemetry")
    if tel:
        labels = tel["labels"]
        out += [
            f"## Telemetry overhead (upstream latency {tel['upstream_latency_ms']:g} ms)",
            "",
            "Three gateways, same policy (no stages): all off (`traces: false, metrics: false, "
            "request_log: {enabled: false}`); all on (request log to a file under bench/results/tmp, "
            f"metrics, OTLP/HTTP traces to {tel['dead_collector']} where nothing listens); and the "
            f"same without tracing. {tel.get('request_log_lines', 0):,} request-log lines written.",
            "",
            "| clients | gateway | req/s | p50 ms | p99 ms | CPU µs/req | p50 vs off | p50 vs tracing off "
            "| errors |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for clients in tel.get("levels", {}):
            by = _lvl(tel, clients)
            for name, label in labels.items():
                if name not in by:
                    continue
                m = by[name]
                voff = _delta(by, name, "tel-off:bench", "p50_ms")
                vnt = _delta(by, name, "tel-on-no-traces:bench", "p50_ms")
                out.append(
                    f"| {clients} | {label} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                    f"{_f(m['cpu_us_per_req'], 0)} | "
                    f"{'—' if name == 'tel-off:bench' else _f(voff, 3, ' ms')} | "
                    f"{_f(vnt, 3, ' ms') if name == 'tel-on:bench' else '—'} | "
                    f"{m['non_2xx'] + m['socket_errors']} |"
                )
        out.append("")

    ch = r.get("cache_hits")
    if ch:
        out += [
            "## Cache hits end to end (memory state, 1 client, keep-alive)",
            "",
            f'Cached question: "{ch["cached_question"]}". Only responses with the expected '
            "`x-gateway-cache` header are timed; anything else is counted under 'not hits'. Semantic "
            f"hits cycle through {len(ch['paraphrases'])} paraphrases (MiniLM cosine to the cached "
            f"question >= {ch['similarity_threshold']}); each lookup embeds the paraphrase.",
            "",
            "| kind | requests | hits | p50 ms | p90 ms | p99 ms | min similarity | not hits |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for kind in ("exact", "semantic"):
            m = ch[kind]
            out.append(
                f"| {kind} | {m['requests']} | {m['hits']} | {_f(m['p50_ms'], 3)} | {_f(m['p90_ms'], 3)} | "
                f"{_f(m['p99_ms'], 3)} | {_f(m.get('similarity_min'), 4)} | "
                f"{', '.join(f'{k}: {v}' for k, v in m['not_hits'].items()) or 'none'} |"
            )
        out.append("")

    ret = r.get("retrieval")
    if ret:
        out += ["## Retrieval latency and ingestion (bench/retrieval_perf.py, unpinned, both cores)", ""]
        if ret.get("error"):
            out += [f"Not measured: {ret['error']}", ""]
        else:
            ing = ret["ingestion"]
            out += [
                "| chunks | chunks embedded for real | build s | queries | p50 ms | p95 ms | "
                "query embedding p50 ms | process RSS MB |",
                "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
            ]
            for row in ret["latency"]:
                out.append(
                    f"| {row['chunks']:,} | {row['real_embeddings']:,} | {row['build_s']:.1f} | "
                    f"{row['queries']} | "
                    f"{row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {row['embed_p50_ms']:.2f} | "
                    f"{row['rss_mb']:.0f} |"
                )
            out += [
                "",
                "Latency = `RetrievalService.search_sync` (MiniLM query embedding, Chroma HNSW dense "
                "search, BM25, fusion, confidence features; top 5 of 100 candidates per retriever). "
                "The index grows in place from the ingestion run's chunks; the chunks added to reach each "
                "size are synthetic ~230-token passages with random unit vectors (embedding 100k chunks "
                "for real would take hours on this CPU); queries always run the real embedder. RSS "
                f"includes the embedder: {ret['rss_after_embedder_mb']:.0f} MB after loading it, "
                f"{ing['rss_after_mb']:.0f} MB after the ingestion run (onnxruntime keeps its arena "
                "from the batched embedding).",
                "",
                "| ingestion | chunks | seconds | chunks/s |",
                "| --- | ---: | ---: | ---: |",
                f"| `Ingestor.ingest_paths`, {ing['files']} Markdown files "
                "(parse, chunk, embed, write, BM25) "
                f"| {ing['chunks']} | {ing['pipeline_s']:.1f} | {ing['pipeline_chunks_per_s']:.1f} |",
                f"| `embedder.embed` alone on the same chunk texts, batches of 32 | {ing['chunks']} | "
                f"{ing['raw_embed_s']:.1f} | {ing['raw_chunks_per_s']:.1f} |",
                "",
                f"Median chunk length {_f(ing.get('median_chunk_tokens'), 0)} MiniLM tokens; "
                f"{ing['errors']} files failed.",
                "",
            ]
    rss = r.get("variant_rss_mb")
    if rss:
        out += [
            "Gateway variants' RSS at the end of their phases (MB): "
            + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
            + ".",
            "",
        ]
    return out

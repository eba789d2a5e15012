"""Summarise a `py-spy record --format raw` profile: where the gateway process spends its CPU.

    python bench/profile_summary.py bench/results/profile-gateway.txt

Raw format: one line per distinct stack, `frame;frame;...;leaf count`, each frame
`function (file:line)`. Self time goes to the leaf Python frame, so time inside a C extension
(orjson, uvloop, httptools) shows up under the Python function that called it.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from typing import Any

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Which layer a source file belongs to, by its top-level package. py-spy prints paths relative
# to their sys.path entry ("gateway/proxy.py", "uvicorn/middleware/proxy_headers.py").
LAYERS = {
    "gateway": "gateway code",
    "middleware": "gateway code",
    "aiohttp": "aiohttp client",
    "uvicorn": "uvicorn + httptools server",
    "httptools": "uvicorn + httptools server",
    "asyncio": "asyncio / uvloop (incl. uvloop C code under Runner.run)",
    "uvloop": "asyncio / uvloop (incl. uvloop C code under Runner.run)",
    "starlette": "starlette",
    "yarl": "yarl / multidict",
    "multidict": "yarl / multidict",
    "logging": "logging",
}


ENTRY_FILES = ("gateway/cli.py", "gateway/__main__.py")


def parse_frame(frame: str) -> tuple[str, str]:
    match = FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match["func"], match["file"]


def short(func: str, file: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
            break
    else:
        for marker in ("/gateway/", "/middleware/"):
            if marker in file:
                file = marker.strip("/") + "/" + file.split(marker, 1)[1]
                break
    return f"{func} ({file})"


def layer_of(file: str) -> str:
    for marker in ("/site-packages/", "/lib/python3.11/", "/lib/python3.12/", "/lib/python3.13/"):
        if marker in file:
            file = file.split(marker, 1)[1]
    top = file.lstrip("/").split("/", 1)[0]
    if file.startswith("/") and top not in LAYERS:
        # An absolute path outside site-packages: our own checkout (gateway/, middleware/).
        parts = file.split("/")
        top = next((p for p in parts if p in ("gateway", "middleware")), top)
    return LAYERS.get(top, "other")


def summarise(raw: str, top: int = 15) -> dict[str, Any]:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    gateway_inclusive: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(f) for f in stack.split(";")]
        # The first entries are the process and thread labels, not Python frames.
        frames = [(func, file) for func, file in frames if file]
        if not frames:
            continue
        total += count
        leaf_func, leaf_file = frames[-1]
        self_time[short(leaf_func, leaf_file)] += count
        layers[layer_of(leaf_file)] += count
        seen = set()
        for func, file in frames:
            name = short(func, file)
            if name in seen:
                continue
            seen.add(name)
            inclusive[name] += count
            # The process entry frames (cli main, serve) hold every sample; they say nothing.
            if layer_of(file) == "gateway code" and not file.endswith(ENTRY_FILES):
                gateway_inclusive[name] += count

    def pct(counter: Counter[str]) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)] if total else []

    return {
        "samples": total,
        "self_by_layer_pct": pct(layers),
        "top_self_pct": pct(self_time),
        "top_inclusive_pct": pct(inclusive),
        "gateway_inclusive_pct": pct(gateway_inclusive),
    }


def main() -> None:
    summary = summarise(open(sys.argv[1]).read(), top=25)
    print(f"{summary['samples']} samples")
    for key in ("self_by_layer_pct", "top_self_pct", "gateway_inclusive_pct", "top_inclusive_pct"):
        print(f"\n{key}:")
        for name, pct in summary[key]:
            print(f"  {pct:5.1f}%  {name}")


if __name__ == "__main__":
    main()

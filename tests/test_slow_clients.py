"""Clients that trickle their headers or body cannot hold connections open: dropped, or 408."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import httpx
import yaml

from tests.conftest import spawn_gateway, wait_until_answering


def test_trickling_headers_are_dropped_and_a_slow_body_gets_408(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"server": {"header_timeout_s": 1.0, "body_timeout_s": 1.0}}))
    server, url = spawn_gateway(config, tmp_path)
    port = int(url.rsplit(":", 1)[1])
    try:
        wait_until_answering(server, f"{url}/healthz")

        tricklers = []
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
            sock.settimeout(0.05)
            tricklers.append(sock)
        opened = time.monotonic()
        alive = set(range(len(tricklers)))
        while alive and time.monotonic() - opened < 6:
            for i in list(alive):
                sock = tricklers[i]
                try:
                    sock.sendall(b"X")  # one more header byte, never the blank line
                    if sock.recv(1024) == b"":
                        alive.discard(i)
                except TimeoutError:
                    pass
                except OSError:  # reset by the server
                    alive.discard(i)
            # Meanwhile an honest client is served.
            assert httpx.get(f"{url}/healthz", timeout=2).status_code == 200
        dropped_after = time.monotonic() - opened
        assert not alive, f"{len(alive)} trickling connections still open after {dropped_after:.1f}s"
        assert dropped_after >= 0.9  # not before the configured second
        for sock in tricklers:
            sock.close()

        slow = socket.create_connection(("127.0.0.1", port))
        slow.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-demo-rag-gateway\r\n"
            b'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"model":'
        )
        slow.settimeout(5)
        # Headers and body may arrive in separate segments: read until the server closes or the
        # error code is in, within a deadline.
        answer = b""
        read_deadline = time.monotonic() + 5
        while b"request_timeout" not in answer and time.monotonic() < read_deadline:
            segment = slow.recv(4096)
            if not segment:
                break
            answer += segment
        slow.close()
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"request_timeout" in answer
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)

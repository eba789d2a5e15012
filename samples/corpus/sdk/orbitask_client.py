"""Official Python client for the Orbitask REST API (v2).

Install with `pip install orbitask` (fictional). Needs Python 3.10 or later.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

import httpx

DEFAULT_BASE_URL = "https://api.orbitask.example/v2"


class OrbitaskError(Exception):
    """Raised for any non-2xx answer that retries could not fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


@dataclass
class Task:
    id: str
    title: str
    done: bool
    due: str | None = None


class OrbitaskClient:
    """Thin client. Retries 429 and 5xx answers up to `max_retries` times.

    On 429 it waits for the number of seconds in the Retry-After header; on 5xx it backs
    off exponentially (1 s, 2 s, 4 s).
    """

    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE_URL, timeout: float = 10.0,
                 max_retries: int = 3) -> None:
        self._http = httpx.Client(
            base_url=base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
        )
        self.max_retries = max_retries

    def list_tasks(self, project_id: str, *, include_done: bool = False) -> list[Task]:
        data = self._request("GET", f"/projects/{project_id}/tasks", params={"done": include_done})
        return [Task(t["id"], t["title"], t["done"], t.get("due")) for t in data["data"]]

    def create_task(self, project_id: str, title: str, due: str | None = None) -> Task:
        body = {"title": title, "due": due}
        t = self._request("POST", f"/projects/{project_id}/tasks", json=body)
        return Task(t["id"], t["title"], t["done"], t.get("due"))

    def complete_task(self, task_id: str) -> None:
        self._request("POST", f"/tasks/{task_id}/complete")

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(self.max_retries + 1):
            resp = self._http.request(method, path, **kwargs)
            if resp.status_code < 400:
                return resp.json() if resp.content else None
            retryable = resp.status_code == 429 or resp.status_code >= 500
            if not retryable or attempt == self.max_retries:
                raise OrbitaskError(resp.status_code, resp.text)
            if resp.status_code == 429:
                time.sleep(float(resp.headers.get("Retry-After", "1")))
            else:
                time.sleep(2**attempt)
        raise AssertionError("unreachable")


def verify_webhook(body: bytes, signature: str, secret: str, timestamp: int,
                   now: float | None = None) -> bool:
    """Check an Orbitask-Signature header; deliveries older than 5 minutes are rejected."""
    if abs((now or time.time()) - timestamp) > 300:
        return False
    expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)

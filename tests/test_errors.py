"""Every failure is an OpenAI error envelope with the right status, type, code and param."""

from __future__ import annotations

import pytest

from tests.conftest import ACME_KEY, OTHER_KEY, UPSTREAM_SECRET, RunningGateway

CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("payload", "param", "code"),
    [
        ({"messages": MSG}, "model", "missing_required_parameter"),
        ({"model": "gpt-mock"}, "messages", "missing_required_parameter"),
        ({"model": 3, "messages": MSG}, "model", "invalid_type"),
        ({"model": "gpt-mock", "messages": []}, "messages", "invalid_type"),
        ({"model": "gpt-mock", "messages": "hi"}, "messages", "invalid_type"),
        (
            {"model": "gpt-mock", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
            "invalid_value",
        ),
        (
            {"model": "gpt-mock", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            "invalid_type",
        ),
        (
            {"model": "gpt-mock", "messages": [{"role": "user"}]},
            "messages[0].content",
            "missing_required_parameter",
        ),
        ({"model": "gpt-mock", "messages": MSG, "stream": "yes"}, "stream", "invalid_type"),
        ({"model": "gpt-mock", "messages": MSG, "temperature": "hot"}, "temperature", "invalid_type"),
        ({"model": "gpt-mock", "messages": MSG, "max_tokens": True}, "max_tokens", "invalid_type"),
        ({"model": "gpt-mock", "messages": MSG, "n": 0}, "n", "invalid_value"),
        (
            {
                "model": "gpt-mock",
                "messages": [{"role": "user", "content": [1, {"type": "text", "text": "x"}]}],
            },
            "messages[0].content[0]",
            "invalid_type",
        ),
        (
            {"model": "gpt-mock", "messages": [{"role": "user", "content": "hi", "name": 3}]},
            "messages[0].name",
            "invalid_type",
        ),
        (
            {"model": "gpt-mock", "messages": MSG, "api_base": "http://evil"},
            "api_base",
            "forbidden_parameter",
        ),
        (
            {"model": "gpt-mock", "messages": MSG, "base_url": "http://evil"},
            "base_url",
            "forbidden_parameter",
        ),
        ({"model": "gpt-mock", "messages": MSG, "api_key": "sk-x"}, "api_key", "forbidden_parameter"),
        (
            {"model": "gpt-mock", "messages": MSG, "custom_llm_provider": "x"},
            "custom_llm_provider",
            "forbidden_parameter",
        ),
        (
            {"model": "gpt-mock", "messages": MSG, "extra_headers": {"a": "b"}},
            "extra_headers",
            "forbidden_parameter",
        ),
    ],
)
def test_bad_chat_requests_are_400_with_param(
    gateway: RunningGateway, payload: dict, param: str, code: str
) -> None:
    with gateway.client() as client:
        response = client.post(CHAT, json=payload)
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == param and error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert gateway.upstream.requests() == []  # nothing bad reaches the upstream


@pytest.mark.parametrize("raw", [b"{not json", b"", b"[1, 2]", b"\xff\xfe"])
def test_malformed_json_is_400(gateway: RunningGateway, raw: bytes) -> None:
    with gateway.client() as client:
        response = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400 and error_of(response)["code"] == "invalid_json"


def test_body_over_limit_is_413(gateway: RunningGateway) -> None:
    big = {"model": "gpt-mock", "messages": [{"role": "user", "content": "x" * 300_000}]}
    with gateway.client() as client:
        response = client.post(CHAT, json=big)
    assert response.status_code == 413 and error_of(response)["code"] == "request_too_large"


def test_auth_failures(gateway: RunningGateway) -> None:
    with gateway.client(key="sk-not-a-key") as client:
        response = client.post(CHAT, json={"model": "gpt-mock", "messages": MSG})
    assert response.status_code == 401 and error_of(response)["code"] == "invalid_api_key"
    assert "sk-not-a-key" not in response.text  # the key is never echoed whole
    with gateway.client() as client:
        response = client.post(
            CHAT, json={"model": "gpt-mock", "messages": MSG}, headers={"Authorization": ""}
        )
    assert response.status_code == 401


def test_azure_style_api_key_header(gateway: RunningGateway) -> None:
    with gateway.client() as client:
        response = client.post(
            CHAT,
            json={"model": "gpt-mock", "messages": MSG},
            headers={"Authorization": "", "api-key": ACME_KEY},
        )
    assert response.status_code == 200


def test_model_of_another_tenant_is_404_like_unknown(gateway: RunningGateway) -> None:
    with gateway.client() as client:
        foreign = client.post(CHAT, json={"model": "other-only", "messages": MSG})
        unknown = client.post(CHAT, json={"model": "no-such-model", "messages": MSG})
    assert foreign.status_code == unknown.status_code == 404
    assert error_of(foreign)["code"] == error_of(unknown)["code"] == "model_not_found"
    # Same wording for both: the response does not reveal that the model exists elsewhere.
    assert error_of(foreign)["message"].replace("other-only", "X") == error_of(unknown)["message"].replace(
        "no-such-model", "X"
    )
    with gateway.client(key=OTHER_KEY) as client:
        assert client.post(CHAT, json={"model": "other-only", "messages": MSG}).status_code == 200


def test_unknown_route_and_method(gateway: RunningGateway) -> None:
    with gateway.client() as client:
        response = client.get("/v1/nothing-here")
        assert response.status_code == 404 and error_of(response)["code"] == "unknown_url"
        response = client.get(CHAT)
        assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


def test_upstream_4xx_passes_through_with_its_message(gateway: RunningGateway) -> None:
    gateway.upstream.script("mock-1", "status:422")
    with gateway.client() as client:
        response = client.post(CHAT, json={"model": "gpt-mock", "messages": MSG})
    assert response.status_code == 422
    assert error_of(response)["message"] == "mock error 422"
    assert len(gateway.upstream.requests()) == 1  # a client error is not retried


def test_upstream_5xx_after_retries_is_502(gateway: RunningGateway) -> None:
    gateway.upstream.script("mock-1", "status:500", "status:503", "status:500")
    with gateway.client() as client:
        response = client.post(CHAT, json={"model": "gpt-mock", "messages": MSG})
    assert response.status_code == 502
    assert error_of(response)["code"] == "upstream_unavailable"
    assert len(gateway.upstream.requests()) == 3  # first try plus max_retries=2


def test_retry_then_success(gateway: RunningGateway) -> None:
    gateway.upstream.script("mock-1", "status:503", "status:429:0")
    with gateway.client() as client:
        response = client.post(CHAT, json={"model": "gpt-mock", "messages": MSG})
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "echo: hi"
    assert len(gateway.upstream.requests()) == 3


def test_upstream_timeout_is_504(gateway: RunningGateway) -> None:
    gateway.upstream.script("mock-1", "hang", "hang", "hang")
    with gateway.client() as client:
        response = client.post(CHAT, json={"model": "gpt-mock", "messages": MSG})
    assert response.status_code == 504 and error_of(response)["code"] == "upstream_timeout"


def test_connect_failure_is_502(tmp_path, upstream, monkeypatch) -> None:
    from gateway.app import create_app
    from gateway.config import load_config
    from tests.conftest import ServerThread, free_port, write_gateway_files

    dead = f"http://127.0.0.1:{free_port()}"
    config_path = write_gateway_files(tmp_path, dead)
    server = ServerThread(create_app(load_config(config_path)))
    try:
        import httpx

        response = httpx.post(
            f"{server.url}{CHAT}",
            json={"model": "gpt-mock", "messages": MSG},
            headers={"Authorization": f"Bearer {ACME_KEY}"},
        )
        assert response.status_code == 502 and error_of(response)["type"] == "upstream_error"
    finally:
        server.stop()


def test_request_id_and_overhead_headers(gateway: RunningGateway) -> None:
    with gateway.client() as client:
        ok = client.post(
            CHAT, json={"model": "gpt-mock", "messages": MSG}, headers={"x-request-id": "req-123"}
        )
        bad = client.post(CHAT, json={"model": "gpt-mock"})
        generated = client.post(CHAT, json={"model": "gpt-mock", "messages": MSG})
    assert ok.headers["x-request-id"] == "req-123"
    assert len(generated.headers["x-request-id"]) == 32
    for response in (ok, bad, generated):
        assert float(response.headers["x-gateway-overhead-ms"]) >= 0


def test_upstream_key_never_reaches_the_client(gateway: RunningGateway, caplog) -> None:
    gateway.upstream.script("mock-1", "status:401")
    with gateway.client() as client:
        responses = [
            client.post(CHAT, json={"model": "gpt-mock", "messages": MSG}),
            client.post(CHAT, json={"model": "gpt-mock", "messages": MSG}),
            client.post(CHAT, json={"model": "gpt-mock", "messages": MSG, "stream": True}),
            client.get("/readyz"),
            client.get("/v1/models"),
        ]
    sent = gateway.upstream.requests()
    assert sent[0]["headers"]["authorization"] == f"Bearer {UPSTREAM_SECRET}"  # it did go upstream
    for response in responses:
        assert UPSTREAM_SECRET not in response.text
        assert all(UPSTREAM_SECRET not in v for v in response.headers.values())
    assert UPSTREAM_SECRET not in caplog.text


def test_azure_deployment_url_and_header(gateway: RunningGateway) -> None:
    with gateway.client() as client:
        response = client.post(CHAT, json={"model": "azure-mock", "messages": MSG})
    assert response.status_code == 200
    sent = gateway.upstream.requests()[-1]
    assert sent["path"] == "/openai/deployments/my-deploy/chat/completions"
    assert sent["query"] == {"api-version": "2024-06-01"}
    assert sent["headers"]["api-key"] == UPSTREAM_SECRET


def test_a_failing_admin_route_answers_an_envelope(gateway: RunningGateway, monkeypatch) -> None:
    import gateway.app as app_module

    async def broken(*_: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(app_module, "tenant_spend", broken)
    with gateway.client() as client:
        response = client.get("/admin/tenants/acme/spend")
    assert response.status_code == 500
    error = error_of(response)
    assert error["type"] == "server_error" and error["code"] == "internal_error"
    assert "/admin/tenants/acme/spend" in error["message"] and "simulated bug" not in error["message"]


@pytest.mark.parametrize("dimensions", ["x", 0, True, 1.5])
def test_bad_embedding_dimensions_are_400(gateway: RunningGateway, dimensions: object) -> None:
    with gateway.client() as client:
        response = client.post(
            "/v1/embeddings", json={"model": "embed-mock", "input": "hi", "dimensions": dimensions}
        )
    assert response.status_code == 400
    error = error_of(response)
    assert error["param"] == "dimensions" and error["code"] == "invalid_value"
    assert gateway.upstream.requests() == []


@pytest.mark.parametrize("stream", [False, True])
def test_an_html_page_with_status_200_is_no_answer(gateway: RunningGateway, stream: bool) -> None:
    """Retried like a failure; a 502 naming what came back once the retries are used up."""
    gateway.upstream.script("mock-1", "html", "ok")
    with gateway.client() as client:
        recovered = client.post(CHAT, json={"model": "gpt-mock", "messages": MSG, "stream": stream})
        assert recovered.status_code == 200 and len(gateway.upstream.requests()) == 2  # retried once
        gateway.upstream.script("mock-1", "html", "html", "html")
        failed = client.post(CHAT, json={"model": "gpt-mock", "messages": MSG, "stream": stream})
    assert failed.status_code == 502
    error = error_of(failed)
    assert error["type"] == "upstream_error" and "text/html" in error["message"]


def test_a_body_that_is_not_json_is_a_502_where_a_stage_reads_it() -> None:
    from gateway.errors import GatewayError
    from gateway.response import GatewayResponse

    with pytest.raises(GatewayError) as raised:
        GatewayResponse(raw=b'{"choices": "\xff\xfe').json()
    assert raised.value.status == 502 and raised.value.code == "upstream_invalid_response"

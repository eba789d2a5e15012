"""The Responses API's file_search tool, run by the gateway against the tenant's own vector stores
whatever the upstream: the official openai SDK unmodified (create, stream, include results,
filters, previous_response_id), file_citation annotations naming the right file, the tenant's
refusal policy, isolation, clear 400s, and answers validated against OpenAI's contract."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import yaml

from gateway.policy import DEFAULT_REFUSAL
from tests.conftest import (
    ACME_KEY,
    OTHER_KEY,
    UPSTREAM_SECRET,
    MockServer,
    RunningGateway,
    gateway_in_thread,
    update_yaml,
    write_gateway_files,
)
from tests.contract import check, check_stream_event
from tests.test_responses_api import NATIVE_MODEL, sse_events

PARKING = b"# Parking\n\nA resident parking permit costs 30 EUR a year and is valid in one zone.\n"
ZONES = b"# Speed zones\n\nThe speed limit in Zone B is 25 km/h near the school, 50 km/h elsewhere.\n"
QUESTION = "How much does a resident parking permit cost?"
ANSWER = "A resident permit costs 30 EUR a year [1]."


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, upstream: MockServer) -> Iterator[RunningGateway]:
    """One gateway for the module (loading the embedder takes seconds), with a native Responses
    deployment beside the chat ones. Retrieval is on in gateway.yaml and off in acme's policy:
    file_search needs no policy retrieval, and acme keeps the default confidence bar."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
        root = tmp_path_factory.mktemp("file-search")
        native = {
            **NATIVE_MODEL,
            "deployments": [{**NATIVE_MODEL["deployments"][0], "api_base": f"{upstream.base}/v1"}],
        }
        path = write_gateway_files(root, upstream.base, extra_models=[native])
        update_yaml(path, retrieval={"enabled": True})
        policy = root / "policies" / "acme.yaml"
        models = yaml.safe_load(policy.read_text())["models"]
        update_yaml(policy, models=[*models, "resp-native"])
        with gateway_in_thread(path, upstream) as running:
            yield running


def sdk(gateway: RunningGateway, key: str = ACME_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def city(gw: RunningGateway) -> dict[str, str]:
    """A store with the parking and speed-zone files, attributes on the latter."""
    client = sdk(gw)
    parking = client.files.create(file=("parking.md", PARKING), purpose="assistants").id
    zones = client.files.create(file=("zones.md", ZONES), purpose="assistants").id
    store = client.vector_stores.create(name="city")
    for file_id, attributes in ((parking, {"topic": "parking"}), (zones, {"topic": "traffic"})):
        done = client.vector_stores.files.create_and_poll(
            vector_store_id=store.id, file_id=file_id, attributes=attributes
        )
        assert done.status == "completed", done.last_error
    return {"store": store.id, "parking": parking, "zones": zones}


def file_search(store_id: str, **extra: Any) -> dict[str, Any]:
    return {"type": "file_search", "vector_store_ids": [store_id], **extra}


def sent_to_upstream(gw: RunningGateway) -> dict[str, Any]:
    return gw.upstream.requests()[-1]["body"]


def test_the_sdk_gets_a_search_call_and_annotations_naming_the_file(
    gw: RunningGateway, city: dict[str, str]
) -> None:
    gw.upstream.script("mock-1", f"say:{ANSWER}")
    response = sdk(gw).responses.create(
        model="gpt-mock",
        input=QUESTION,
        tools=[file_search(city["store"])],
        include=["file_search_call.results"],
    )
    search, message = response.output
    assert search.type == "file_search_call" and search.status == "completed"
    assert search.queries == [QUESTION]
    assert search.results and search.results[0].file_id == city["parking"]
    assert search.results[0].filename == "parking.md" and "30 EUR" in (search.results[0].text or "")
    assert response.output_text == ANSWER
    (note,) = message.content[0].annotations  # type: ignore[union-attr]
    assert note.type == "file_citation" and note.file_id == city["parking"] and note.filename == "parking.md"
    assert note.index == ANSWER.index("[1]") + 3  # right after the marker it stands for
    check(response.model_dump(mode="json", exclude_unset=True), "Response")

    sent = sent_to_upstream(gw)
    assert "tools" not in sent, "the upstream must never see the file_search tool"
    system = next(m["content"] for m in sent["messages"] if m["role"] == "system")
    assert "[1] Source: parking.md" in system and "30 EUR" in system


def test_results_are_left_out_unless_included(gw: RunningGateway, city: dict[str, str]) -> None:
    gw.upstream.script("mock-1", f"say:{ANSWER}")
    response = sdk(gw).responses.create(model="gpt-mock", input=QUESTION, tools=[file_search(city["store"])])
    assert response.output[0].type == "file_search_call" and response.output[0].results is None


def test_a_stream_sends_the_search_events_first_in_order(gw: RunningGateway, city: dict[str, str]) -> None:
    gw.upstream.script("mock-1", f"say:{ANSWER}")
    raw = httpx.post(
        f"{gw.url}/v1/responses",
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        json={"model": "gpt-mock", "input": QUESTION, "stream": True, "tools": [file_search(city["store"])]},
        timeout=60,
    )
    assert raw.status_code == 200, raw.text
    events = sse_events(raw.text)
    for event in events:
        check_stream_event(event)
    kinds = [e["type"] for e in events]
    assert kinds[:7] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.file_search_call.in_progress",
        "response.file_search_call.searching",
        "response.file_search_call.completed",
        "response.output_item.done",
    ]
    assert "response.output_text.annotation.added" in kinds and kinds[-1] == "response.completed"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))

    gw.upstream.script("mock-1", f"say:{ANSWER}")
    with sdk(gw).responses.stream(
        model="gpt-mock", input=QUESTION, tools=[file_search(city["store"])]
    ) as stream:
        final = stream.get_final_response()
    assert final.output[0].type == "file_search_call" and final.output_text == ANSWER
    note = final.output[1].content[0].annotations[0]  # type: ignore[union-attr]
    assert note.file_id == city["parking"]


def test_filters_and_the_result_limit_apply(gw: RunningGateway, city: dict[str, str]) -> None:
    gw.upstream.script("mock-1", "say:It is 25 km/h [1].")
    response = sdk(gw).responses.create(
        model="gpt-mock",
        input="What is the speed limit in Zone B near the school?",
        tools=[
            file_search(
                city["store"], max_num_results=1, filters={"type": "eq", "key": "topic", "value": "traffic"}
            )
        ],
        include=["file_search_call.results"],
    )
    results = response.output[0].results
    assert results is not None and [r.file_id for r in results] == [city["zones"]]
    system = next(m["content"] for m in sent_to_upstream(gw)["messages"] if m["role"] == "system")
    assert "zones.md" in system and "parking.md" not in system


def test_a_question_the_files_cannot_answer_is_refused_without_an_upstream_call(
    gw: RunningGateway, city: dict[str, str]
) -> None:
    before = len(gw.upstream.requests())
    raw = httpx.post(
        f"{gw.url}/v1/responses",
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        json={
            "model": "gpt-mock",
            "input": "Who won the 1998 football world cup final?",
            "tools": [file_search(city["store"])],
        },
        timeout=60,
    )
    assert raw.status_code == 200, raw.text
    assert raw.headers["x-gateway-refused"] == "low_confidence"
    assert float(raw.headers["x-gateway-confidence"]) < 0.5
    body = raw.json()
    assert body["output"][0]["type"] == "file_search_call"
    assert body["output"][1]["content"][0]["text"] == DEFAULT_REFUSAL
    assert len(gw.upstream.requests()) == before, "a refusal must not reach the model"


def test_the_conversation_continues_with_previous_response_id(
    gw: RunningGateway, city: dict[str, str]
) -> None:
    client = sdk(gw)
    gw.upstream.script("mock-1", f"say:{ANSWER}", "say:It is valid in one zone [1].")
    first = client.responses.create(model="gpt-mock", input=QUESTION, tools=[file_search(city["store"])])
    second = client.responses.create(
        model="gpt-mock",
        input="In how many zones is a resident parking permit valid?",
        previous_response_id=first.id,
        tools=[file_search(city["store"])],
    )
    assert second.output[0].type == "file_search_call" and second.output_text.startswith("It is valid")
    sent = sent_to_upstream(gw)
    assert [m["role"] for m in sent["messages"]][-3:] == ["user", "assistant", "user"]


def test_a_native_responses_upstream_gets_the_sources_not_the_tool(
    gw: RunningGateway, city: dict[str, str]
) -> None:
    response = sdk(gw).responses.create(
        model="resp-native",
        input=QUESTION,
        tools=[file_search(city["store"])],
        include=["file_search_call.results"],
    )
    sent = sent_to_upstream(gw)
    assert "tools" not in sent and "include" not in sent
    assert "[1] Source: parking.md" in sent["instructions"]
    assert response.output[0].type == "file_search_call" and response.output[0].results


def test_another_tenants_store_is_not_found(gw: RunningGateway, city: dict[str, str]) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        sdk(gw, OTHER_KEY).responses.create(
            model="other-only", input=QUESTION, tools=[file_search(city["store"])]
        )
    assert raised.value.code == "vector_store_not_found"


@pytest.mark.parametrize(
    ("tool", "param"),
    [
        ({"type": "file_search"}, "tools[0].vector_store_ids"),
        ({"type": "file_search", "vector_store_ids": []}, "tools[0].vector_store_ids"),
        (
            {"type": "file_search", "vector_store_ids": ["vs_x"], "max_num_results": 0},
            "tools[0].max_num_results",
        ),
        (
            {"type": "file_search", "vector_store_ids": ["vs_x"], "filters": {"type": "like"}},
            "tools[0].filters",
        ),
        (
            {"type": "file_search", "vector_store_ids": ["vs_x"], "ranking_options": {"score_threshold": 2}},
            "tools[0].ranking_options.score_threshold",
        ),
        ({"type": "file_search", "vector_store_ids": ["vs_x"], "colour": "red"}, "tools[0].colour"),
    ],
)
def test_a_bad_tool_is_a_400_naming_the_field(gw: RunningGateway, tool: dict[str, Any], param: str) -> None:
    raw = httpx.post(
        f"{gw.url}/v1/responses",
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        json={"model": "gpt-mock", "input": QUESTION, "tools": [tool]},
        timeout=30,
    )
    assert raw.status_code == 400, raw.text
    assert raw.json()["error"]["param"] == param


def test_two_file_search_tools_are_refused(gw: RunningGateway) -> None:
    tool = {"type": "file_search", "vector_store_ids": ["vs_x"]}
    raw = httpx.post(
        f"{gw.url}/v1/responses",
        headers={"Authorization": f"Bearer {ACME_KEY}"},
        json={"model": "gpt-mock", "input": QUESTION, "tools": [tool, tool]},
        timeout=30,
    )
    assert raw.status_code == 400 and raw.json()["error"]["param"] == "tools[1]"


def test_with_the_policys_retrieval_on_the_tool_replaces_it_and_refuses_once(
    tmp_path_factory: pytest.TempPathFactory, upstream: MockServer
) -> None:
    """A tenant whose policy has retrieval: the named stores are searched instead of its corpus,
    and the chain's refusal stage applies the bar to that search, once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOCK_UPSTREAM_KEY", UPSTREAM_SECRET)
        root = tmp_path_factory.mktemp("file-search-retrieval")
        path = write_gateway_files(root, upstream.base)
        update_yaml(path, retrieval={"enabled": True})
        update_yaml(root / "policies" / "acme.yaml", retrieval={"enabled": True})
        with gateway_in_thread(path, upstream) as running:
            client = sdk(running)
            parking = client.files.create(file=("parking.md", PARKING), purpose="assistants").id
            store = client.vector_stores.create(name="own", file_ids=[parking])
            deadline = time.monotonic() + 60
            while client.vector_stores.retrieve(store.id).file_counts.in_progress:
                assert time.monotonic() < deadline, "the file was not ingested in time"
                time.sleep(0.1)
            running.upstream.script("mock-1", f"say:{ANSWER}")
            answered = client.responses.create(
                model="gpt-mock", input=QUESTION, tools=[file_search(store.id)]
            )
            assert answered.output_text == ANSWER
            assert answered.output[1].content[0].annotations[0].file_id == parking  # type: ignore[union-attr]
            refused = httpx.post(
                f"{running.url}/v1/responses",
                headers={"Authorization": f"Bearer {ACME_KEY}"},
                json={"model": "gpt-mock", "input": "Who won the 1998 football world cup final?",
                      "tools": [file_search(store.id)]},
                timeout=60,
            )  # fmt: skip
            assert refused.headers["x-gateway-refused"] == "low_confidence"
            assert refused.json()["output"][1]["content"][0]["text"] == DEFAULT_REFUSAL

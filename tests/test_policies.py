"""Policies: inheritance, validation that names file and field, hot reload, keys, schema export."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.cli import main, policy_schema
from gateway.policy import PolicyStore, hash_key, validate_dir
from tests.conftest import ACME_KEY, RunningGateway

REPO = Path(__file__).resolve().parents[1]
CHAT = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


def write(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data))


def test_tenant_inherits_and_overrides_default(tmp_path: Path) -> None:
    write(tmp_path / "_default.yaml", {"models": ["a"], "log_content": True, "retrieval": {"enabled": True}})
    write(tmp_path / "t1.yaml", {"tenant": "t1", "api_keys": [hash_key("k1")]})
    write(tmp_path / "t2.yaml", {"tenant": "t2", "models": ["b"], "retrieval": {"enabled": False}})
    policies, problems = validate_dir(tmp_path)
    assert problems == []
    by_name = {p.tenant: p for p in policies}
    assert by_name["t1"].models == ["a"] and by_name["t1"].log_content and by_name["t1"].retrieval.enabled
    assert by_name["t2"].models == ["b"] and not by_name["t2"].retrieval.enabled


def test_validate_names_file_field_and_problem(tmp_path: Path, capsys) -> None:
    write(tmp_path / "_default.yaml", {"models": ["local-extractive"]})
    write(tmp_path / "good.yaml", {"tenant": "good"})
    write(tmp_path / "bad.yaml", {"tenant": "bad", "api_keys": ["sk-plaintext-key"]})
    write(tmp_path / "typo.yaml", {"tenant": "typo", "modles": ["local-extractive"]})
    write(tmp_path / "misnamed.yaml", {"tenant": "someone-else"})
    assert main(["policy", "validate", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'bad.yaml'}" in err and "api_keys.0" in err and "sha256" in err
    assert f"{tmp_path / 'typo.yaml'}" in err and "modles" in err
    assert "does not match the file name" in err
    assert "good.yaml" not in err


def test_validate_accepts_the_shipped_policies(capsys) -> None:
    assert main(["policy", "validate", str(REPO / "policies")]) == 0


def test_duplicate_key_across_tenants_is_reported(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", {"tenant": "a", "api_keys": [hash_key("same")]})
    write(tmp_path / "b.yaml", {"tenant": "b", "api_keys": [hash_key("same")]})
    _, problems = validate_dir(tmp_path)
    assert any("also listed by tenant 'a'" in p for p in problems)


def test_invalid_edit_keeps_last_good_policy(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", {"tenant": "t", "api_keys": [hash_key("k")], "models": ["a"]})
    store = PolicyStore(tmp_path)
    assert store.load() == []
    (tmp_path / "t.yaml").write_text("tenant: t\nmodels: [a\n")  # broken YAML
    errors = store.load()
    assert errors and "not valid YAML" in errors[0]
    assert store.snapshot.policies["t"].models == ["a"]
    assert store.snapshot.owner_of("k") is not None


def test_policies_that_cannot_be_applied_are_not_served(tmp_path: Path) -> None:
    """A reload whose chains cannot be built (e.g. the vector store is down) keeps the old policies."""
    write(tmp_path / "t.yaml", {"tenant": "t", "api_keys": [hash_key("k")], "models": ["a"]})
    applied: list[set[str]] = []
    broken = {"now": False}

    def apply(snapshot) -> None:
        if broken["now"]:
            raise RuntimeError("the Chroma server did not answer")
        applied.append(set(snapshot.policies))

    store = PolicyStore(tmp_path, on_change=apply)
    store.load()
    write(tmp_path / "u.yaml", {"tenant": "u", "api_keys": [hash_key("k2")], "models": ["a"]})
    broken["now"] = True
    with pytest.raises(RuntimeError):
        store.load()
    assert set(store.snapshot.policies) == {"t"} and store.snapshot.owner_of("k2") is None
    assert "could not be applied" in store.last_errors[-1]
    assert store.changed()  # so the watcher tries again
    broken["now"] = False
    assert store.load() == []
    assert set(store.snapshot.policies) == {"t", "u"} and applied[-1] == {"t", "u"}
    assert not store.changed()


def test_a_missing_policies_folder_is_reported_and_picked_up_once_created(tmp_path: Path) -> None:
    folder = tmp_path / "policies"
    store = PolicyStore(folder)
    errors = store.load()
    assert errors and "does not exist" in errors[0] and not store.snapshot.policies
    folder.mkdir()
    write(folder / "t.yaml", {"tenant": "t", "api_keys": [hash_key("k")], "models": ["a"]})
    assert store.changed()
    assert store.load() == [] and store.snapshot.owner_of("k") is not None


def test_keys_create_prints_key_and_matching_hash(capsys) -> None:
    assert main(["keys", "create", "--tenant", "acme"]) == 0
    out = capsys.readouterr().out
    key = next(line.strip() for line in out.splitlines() if line.strip().startswith("sk-rg-"))
    assert f'- "{hash_key(key)}"' in out


def test_shipped_schema_is_current() -> None:
    shipped = json.loads((REPO / "policies" / "schema.json").read_text())
    assert shipped == json.loads(json.dumps(policy_schema(), sort_keys=True)), (
        "policies/schema.json is stale: run `rag-gateway policy schema --output policies/schema.json`"
    )


def test_cli_runs_as_module(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "validate", str(REPO / "policies")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_bad_config_file_is_reported_not_raised(tmp_path: Path, capsys) -> None:
    (tmp_path / "gateway.yaml").write_text("models:\n  - name: x\n    deployments: []\n")
    assert main(["policy", "validate", "--config", str(tmp_path / "gateway.yaml")]) == 2
    err = capsys.readouterr().err
    assert "gateway.yaml" in err and "models.0.deployments" in err


def test_hot_reload_within_two_seconds(gateway: RunningGateway) -> None:
    policy_file = gateway.config_path.parent / "policies" / "acme.yaml"
    policy = yaml.safe_load(policy_file.read_text())
    with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {ACME_KEY}"}) as client:
        assert client.post(CHAT, json={"model": "gpt-mock", "messages": MSG}).status_code == 200
        write(policy_file, {**policy, "models": ["local-extractive"]})
        deadline = time.monotonic() + 2.0
        while client.post(CHAT, json={"model": "gpt-mock", "messages": MSG}).status_code != 404:
            assert time.monotonic() < deadline, "policy edit not applied within 2 s"
            time.sleep(0.1)
        # An invalid edit is rejected and the last good policy stays in force.
        policy_file.write_text("tenant: acme\napi_keys: [not-a-hash]\n")
        time.sleep(1.5)
        assert client.post(CHAT, json={"model": "local-extractive", "messages": MSG}).status_code == 200
        assert client.post(CHAT, json={"model": "gpt-mock", "messages": MSG}).status_code == 404


def test_default_min_confidence_is_the_calibrated_threshold() -> None:
    from gateway.policy import RetrievalPolicy
    from gateway.retrieval.confidence import DEFAULT_REFUSAL_THRESHOLD

    assert RetrievalPolicy().min_confidence == DEFAULT_REFUSAL_THRESHOLD


def test_readme_policy_examples_validate() -> None:
    import re

    from gateway.policy import Policy

    examples = 0
    for block in re.findall(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), re.S):
        data = yaml.safe_load(block)
        if isinstance(data, dict) and not {"models", "server", "state"} & set(data):
            Policy.model_validate({"tenant": "readme", **{k: v for k, v in data.items() if k != "api_keys"}})
            examples += 1
    assert examples >= 3


def test_validate_reports_a_model_gateway_yaml_does_not_define(tmp_path: Path, capsys) -> None:
    """Built-ins stay beside `models:`; a policy naming an unknown model is reported with a hint."""
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "policies_dir": "policies",
                "models": [
                    {"name": "gpt-4o-mini", "deployments": [{"provider": "openai", "model": "gpt-4o-mini"}]}
                ],
            }
        )
    )
    policies = tmp_path / "policies"
    policies.mkdir()
    write(
        policies / "ok.yaml", {"tenant": "ok", "models": ["gpt-4o-mini", "local-extractive", "local-minilm"]}
    )
    write(policies / "typo.yaml", {"tenant": "typo", "models": ["gpt-4o-mnii"]})
    assert main(["policy", "validate", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert f"{policies / 'typo.yaml'}: tenant 'typo': models: 'gpt-4o-mnii'" in err
    assert "did you mean 'gpt-4o-mini'?" in err
    assert "ok.yaml" not in err  # the built-in models are still served beside the configured one
    config.write_text(config.read_text() + "builtin_models: false\n")
    assert main(["policy", "validate", "--config", str(config)]) == 1
    assert "'local-extractive' is not a model gateway.yaml defines" in capsys.readouterr().err

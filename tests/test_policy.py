"""Policy files: a bad one stops start-up with a message naming the file and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli.main import main
from gateway.policy.model import PolicyError, hash_key, load_policy
from gateway.policy.settings import EMBEDDED_CONFIG

CLOUD_CONFIG = EMBEDDED_CONFIG.parent / "cloud.yaml"


def minimal() -> dict[str, Any]:
    return {
        "providers": [{"name": "p", "kind": "openai", "base_url": "http://127.0.0.1:1/v1"}],
        "models": [{"name": "m", "provider": "p", "id": "gpt-4o-mini-2024-07-18"}],
        "teams": [{"name": "t", "key_sha256": hash_key("k")}],
    }


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


@pytest.mark.parametrize("path", [EMBEDDED_CONFIG, CLOUD_CONFIG])
def test_shipped_examples_validate(path: Path) -> None:
    policy = load_policy(path)
    assert policy.teams


def test_minimal_policy(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, minimal()))
    assert policy.providers[0].base_url == "http://127.0.0.1:1/v1"


def _broken(change: Any) -> dict[str, Any]:
    data = minimal()
    change(data)
    return data


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda d: d["providers"][0].update(kind="azure"), "providers[0]"),
        (lambda d: d["providers"][0].update(base_url="ftp://x"), "base_url"),
        (lambda d: d["providers"][0].update(colour="blue"), "colour"),
        (lambda d: d["models"][0].update(provider="nope"), "models[0].provider"),
        (lambda d: d["models"][0].update(id="gpt-4o-latest"), "floating"),
        (lambda d: d["models"][0].update(price={"input": -1, "output": 1}), "price.input"),
        (lambda d: d["models"].append(dict(d["models"][0])), "duplicate"),
        (lambda d: d.update(routes=[{"name": "r", "candidates": ["ghost"]}]), "ghost"),
        (lambda d: d.update(routes=[{"name": "m", "candidates": ["m"]}]), "also a model alias"),
        (lambda d: d["teams"][0].update(key_sha256="plaintext-key"), "key_sha256"),
        (lambda d: d["teams"][0].update(routes=["ghost"]), "teams[0].routes"),
        (lambda d: d.pop("teams"), "teams"),
    ],
)
def test_bad_policy_names_file_and_field(tmp_path: Path, change: Any, needle: str) -> None:
    path = write(tmp_path, _broken(change))
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert needle in message


def test_floating_alias_allowed_when_marked(tmp_path: Path) -> None:
    data = minimal()
    data["models"][0].update(id="gpt-4o-latest", allow_floating=True)
    assert load_policy(write(tmp_path, data)).models[0].allow_floating


@pytest.mark.parametrize("text", ["providers: [", "- just\n- a list\n"])
def test_not_yaml_or_not_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(PolicyError, match=r"policy\.yaml"):
        load_policy(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read"):
        load_policy(tmp_path / "absent.yaml")


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(write(tmp_path, minimal()))]) == 0
    assert "ok (1 providers, 1 models" in capsys.readouterr().out
    bad = _broken(lambda d: d["models"][0].update(provider="nope"))
    assert main(["check-config", str(write(tmp_path, bad))]) == 1
    assert "models[0].provider" in capsys.readouterr().err


def test_check_config_without_a_file_checks_what_serve_would_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    assert main(["check-config"]) == 0
    assert f"{EMBEDDED_CONFIG}: ok (2 providers, 2 models" in capsys.readouterr().out
    bad = write(tmp_path, _broken(lambda d: d["models"][0].update(provider="nope")))
    monkeypatch.setenv("GATEWAY_CONFIG", str(bad))
    assert main(["check-config"]) == 1
    assert "models[0].provider" in capsys.readouterr().err


def test_hash_key_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hash-key", "dev-key"]) == 0
    assert capsys.readouterr().out.strip() == hash_key("dev-key")


def test_serve_refuses_a_bad_config_before_starting(tmp_path: Path) -> None:
    bad = write(tmp_path, _broken(lambda d: d["providers"][0].update(region=5)))
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(bad), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "providers[0]" in result.stderr
    assert "region" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_logs_the_gateways_info_and_only_third_party_warnings() -> None:
    """onnxruntime's quantizer logs each tensor at INFO on the root logger on a first start."""
    code = (
        "import logging; from gateway.cli.main import configure_logging; "
        "configure_logging('INFO'); logging.info('Quantization parameters for tensor'); "
        "logging.getLogger('onnxruntime').warning('a third-party warning'); "
        "logging.getLogger('gateway.api.app').info('the gateway speaks')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert "the gateway speaks" in result.stderr
    assert "a third-party warning" in result.stderr
    assert "Quantization parameters" not in result.stderr

"""One way to say what is wrong with data pydantic rejected: ``field[0].sub: message``; and one
way to load a validated YAML file (the policy, an eval suite) with errors naming file and field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def describe(exc: ValidationError, *, limit: int = 5) -> str:
    """The first ``limit`` problems, each with its JSON path."""
    problems = []
    for error in exc.errors(include_url=False)[:limit]:
        location = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"]
        ).lstrip(".")
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{location}: {message}" if location else message)
    more = exc.error_count() - limit
    if more > 0:
        problems.append(f"and {more} more")
    return "; ".join(problems)


def load_yaml_model(path: Path, model: type[M], error: type[Exception], shape: str) -> M:
    """``path`` read as YAML and validated as ``model``; any problem raises ``error`` with a
    message that starts with the path (``shape`` says what the top level must be)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: {shape}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(f"{path}: {describe(exc)}") from exc

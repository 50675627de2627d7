"""One way to say what is wrong with data pydantic rejected: ``field[0].sub: message``."""

from __future__ import annotations

from pydantic import ValidationError


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

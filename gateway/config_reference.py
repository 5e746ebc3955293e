"""The README's configuration reference, made from the settings model.

Each setting's docstring (gateway/config.py) is its line in the table;
tests/test_config.py fails when README.md and `reference()` differ. To update
the README, paste the output of
`python -c 'import gateway.config_reference as c; print(c.reference())'`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from gateway.config import Settings

__all__ = ["reference"]


def reference() -> str:
    """The README's configuration table: every setting, its default and its docstring."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, field in _settings_of(Settings):
        meaning = " ".join((field.description or "").split())
        meaning = re.sub(r"\b(docs/[\w-]+\.md)", r"[\1](\1)", meaning)
        lines.append(f"| `{key}` | `{_shown(field.get_default())}` | {meaning} |")
    return "\n".join(lines) + "\n"


def _settings_of(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, field in model.model_fields.items():
        if field.exclude:
            continue  # a secret: documented by its `_env`
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _settings_of(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def _shown(value: Any) -> str:
    """A default as YAML-ish text: `null`, `true`, `10` (for 10.0), `["HS256"]`."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

"""The app's operations, read from its own OpenAPI document, so a new route is probed without
anyone listing it here; and a valid value for every parameter, so one bad value at a time
reaches the code behind it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # template, e.g. /api/v1/jobs/{job_id}
    params: tuple[tuple[str, str, str], ...]  # (name, in, json type)
    has_body: bool

    @property
    def needs_token(self) -> bool:
        return self.path.startswith("/api/v1")

    def url(self, values: dict[str, str]) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], self.path)

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _type(schema: dict[str, Any]) -> str:
    if "type" in schema:
        return schema["type"]
    for option in schema.get("anyOf", []):
        if option.get("type") not in (None, "null"):
            return option["type"]
    return "string"


def operations(app) -> list[Operation]:
    out = []
    for path, ops in app.openapi()["paths"].items():
        for method, op in ops.items():
            params = tuple(
                (p["name"], p["in"], _type(p["schema"])) for p in op.get("parameters", [])
            )
            out.append(Operation(method.upper(), path, params, "requestBody" in op))
    return out


# A value per parameter name that the route accepts (ids are filled in by the test).
GOOD_VALUES = {
    "fmt": "png",
    "ref": "latest",
    "name": "adding",
    "checkpoint": "latest",
    "split": "test",
    "status": "succeeded",
    "task": "adding",
    "neuron": "celif",
    "limit": "5",
    "n": "2",
    "offset": "0",
    "after": "0",
    "layer": "0",
    "dry_run": "true",
}

# Bad values, each with the statuses a correct service may answer (never a 5xx).
NUL_VALUES = ("abc\x00def", "\x00")
OUT_OF_RANGE = ("9223372036854775808", "-9223372036854775809", "1" + "0" * 40)
OVERLONG = ("x" * 8000,)
TRAVERSAL = ("../../../../etc/passwd", "..\\..\\windows", "%2e%2e%2fetc%2fpasswd", ".")

"""Response helpers shared by the routers."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    """A JSON response encoded by orjson rather than the json module."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def json_response(
    body: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> FastJSONResponse:
    """`body` as JSON with `status_code` and any extra `headers`."""
    return FastJSONResponse(body, status_code=status_code, headers=headers)

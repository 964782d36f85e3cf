"""Response helpers shared by the routers."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def json_response(
    body: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> FastJSONResponse:
    return FastJSONResponse(body, status_code=status_code, headers=headers)

"""A pure-ASGI shortcut in front of Litestar for plain POSTs to the hot routes.

Litestar's request machinery (routing, kwargs model, response object, middleware stack) costs
~120 µs of CPU per request, more than scoring a call. A POST to /v1/score, /v1/score/batch or
/v1/calls/end without query parameters is therefore handed straight to `HotRoutes.respond`, the
same function the Litestar handlers call: same admission rules, same answers, byte for byte
(tests/test_serving_fastpath.py). Everything else goes to Litestar untouched.
"""

from __future__ import annotations

from serving.endpoints import HotRoutes


class FastPath:
    def __init__(self, app, hot: HotRoutes) -> None:
        self.app = app
        self.hot = hot
        self.paths = frozenset(hot.paths)

    async def __call__(self, scope, receive, send) -> None:
        if (scope["type"] != "http" or scope["path"] not in self.paths or scope["method"] != "POST"
                or scope["query_string"]):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        status, headers, body = await self.hot.respond(scope["path"], receive, scope["headers"],
                                                       client[0] if client else None)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

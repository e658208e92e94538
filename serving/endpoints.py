"""The three hot routes as one function: admit, score or record, encode.

`respond` is what both entry points call: the Litestar handlers (requests with query parameters)
and the pure-ASGI shortcut for plain requests (serving/fastpath.py). So the rules, the order they
apply in, and every byte of every answer are the same whichever path took the request.
"""

from __future__ import annotations

import msgspec

from serving.admission import Admission
from serving.errors import Refused
from serving.history_store import RateLimited, StoreUnavailable
from serving.schemas import BatchResult
from serving.service import ScoringService

JSON = (b"content-type", b"application/json")
_encode = msgspec.json.Encoder().encode


class HotRoutes:
    paths = ("/v1/score", "/v1/score/batch", "/v1/calls/end")

    def __init__(self, service: ScoringService, admission: Admission) -> None:
        self.service = service
        self.admission = admission

    async def respond(self, path: str, receive, headers, peer: str | None, include_features: bool = False,
                      explain: bool = False) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) for POST `path`; `headers` are the ASGI (name, value) pairs."""
        authorization, length = b"", None
        for name, value in headers:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                length = value
        service, admission = self.service, self.admission
        try:
            client = admission.client(authorization, peer)  # 401
            body = await admission.read_body(receive, length)  # 413
            rate = admission.token(client)
            try:
                data = admission.decode(path, body)  # 400 / 422: types, operator, number syntax, times, batch size
                ending, batch = path == "/v1/calls/end", path == "/v1/score/batch"
                if ending:
                    work = service.canonical_end(data)
                else:
                    work = service.canonical_all(data.calls if batch else [data], batch)  # 422: numbers
            except Refused:
                if rate is not None:
                    self._count(rate)  # invalid requests count against the limit too (429 wins)
                raise
            model = service.model_or_503()
            if ending:
                answer = _encode(service.end(work, rate))
            else:
                results = service.score(model, work, rate, include_features, explain)
                answer = _encode(BatchResult(model.version, results) if batch else results[0])
            return 200, [JSON, (b"content-length", str(len(answer)).encode())], answer
        except Refused as exc:
            return self._refusal(exc)
        except RateLimited as exc:
            return self._refusal(Refused(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}))
        except StoreUnavailable as exc:
            return self._refusal(service.unavailable(exc))

    def _count(self, rate) -> None:
        try:
            self.service.store.take(rate)
        except StoreUnavailable:
            pass  # the 4xx stands; a store outage is not the caller's fault
        except RateLimited as exc:
            raise Refused(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)}) from None

    @staticmethod
    def _refusal(exc: Refused) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        body = exc.body()
        headers = [JSON, (b"content-length", str(len(body)).encode())]
        headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
        return exc.status, headers, body

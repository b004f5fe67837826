"""A `requests` adapter that bounds a whole answer, not each read: the Prometheus client's
(`prom.Prometheus`) queries must end, whatever the server does."""

from __future__ import annotations

import time
from typing import Any

from requests import PreparedRequest, Response
from requests.adapters import HTTPAdapter
from requests.exceptions import ContentDecodingError, ReadTimeout


class BoundedAnswers(HTTPAdapter):
    """An answer's body is read within `deadline_s` of its head and up to `max_bytes`.
    requests' timeout bounds each read only, so a server dripping a byte a second held a
    query (and with it the operator's status timer) for as long as it liked."""

    def __init__(self, deadline_s: float, max_bytes: int, retry: Any) -> None:
        super().__init__(max_retries=retry)
        self.deadline_s, self.max_bytes = deadline_s, max_bytes

    def send(
        self,
        request: PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Any = True,
        cert: Any = None,
        proxies: dict[str, str] | None = None,
    ) -> Response:
        resp = super().send(request, True, timeout, verify, cert, proxies)
        end = time.monotonic() + self.deadline_s
        body: list[bytes] = []
        size = 0
        try:
            # read1: what has arrived (stream(n) would wait for n bytes before a check)
            while chunk := resp.raw.read1(65536, decode_content=True):
                size += len(chunk)
                if size > self.max_bytes:
                    raise ContentDecodingError(f"answer over {self.max_bytes} bytes")
                if time.monotonic() > end:
                    raise ReadTimeout(f"answer not complete {self.deadline_s:g}s after its head")
                body.append(chunk)
        finally:
            resp.close()  # (after a whole read the connection goes back to the pool)
        # What requests does when it reads a body itself (`Response.content`).
        resp._content, resp._content_consumed = b"".join(body), True
        return resp

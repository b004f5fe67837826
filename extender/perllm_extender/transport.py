"""The extender's bounds on its listeners' clients (`perllm.httpguard`, uvicorn's
httptools protocol with a read deadline and a head limit; both the TLS port and the
plain-HTTP probe port, which needs no certificate):

- a request must arrive whole, head and body, within `READ_TIMEOUT_S` of its first byte
  (or of the connection, before the first request): **408** `{"Error"}` and the connection
  closed. kube-scheduler sends a request at once and gives up after its `httpTimeout` (5 s
  by default, 2 s in the devcluster), so this never cuts one short; no allowance for slow
  bodies (`Bounds.min_rate` 0);
- a request head (request line and headers) is at most 64 KiB: **431** and the connection
  closed (kube-scheduler's are a few hundred bytes).

The body's own limit is `middleware.BodyLimit` (413).
"""

from __future__ import annotations

from perllm.httpguard import Bounds, guarded

READ_TIMEOUT_S = 10.0

BOUNDS = Bounds(READ_TIMEOUT_S, logger="perllm.extender")
GuardedHttp = guarded(BOUNDS)

"""Persistence of the learned state: ConfigMap `perllm-extender-state`, key
`state.json`, in the extender's namespace; written every `interval_s` and on shutdown,
read on start.

`state.json` = `{"version": 1, "savedAt": RFC 3339, "services": {<service key>: <the
service's ArmStats.export_state()>}}`, service key `namespace/service@model` (see
bandits.py): arms inside are keyed `<service>|<tier>/<hardware>/<nominal Mbit/s>`, i.e. per
node pool, so the state survives nodes coming and going. Absent state starts fresh;
unreadable state starts fresh with a warning (and is overwritten at the next save). A
store that cannot be read (API down, RBAC) is retried before each save, and nothing is
saved until it has been read: saving then would overwrite the stored state with a fresh one.

Size: a ConfigMap holds at most 1 MiB. Each save first forgets services deleted longer
than the grace period (`ArmStore.expire`); past `warn_bytes` it warns (log line once per
crossing, `size_warning` in /readyz, the size metric); past `budget_bytes` it leaves the
least worth keeping services out of the saved document (expired first, then the least
recently used) instead of failing the save.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
from collections.abc import Callable
from typing import Any, Protocol

from perllm.csucb import STATE_VERSION
from perllm.csucb.config import OUT_BINS
from perllm_extender.bandits import ArmStore
from perllm_extender.periodic import Periodic

log = logging.getLogger("perllm.extender.state")

CONFIGMAP = "perllm-extender-state"
KEY = "state.json"
FILE_VERSION = 1


class StateStore(Protocol):
    def load(self) -> str | None:
        """The stored text, None when there is none; raises when it cannot be read."""
        ...

    def save(self, text: str) -> None: ...


class MemoryStore:
    """A store in memory (tests, `--no-kube`)."""

    def __init__(self, text: str | None = None) -> None:
        self.text = text
        self.saves = 0

    def load(self) -> str | None:
        return self.text

    def save(self, text: str) -> None:
        self.text = text
        self.saves += 1


class ConfigMapStore:
    """The ConfigMap on the kubernetes client: create on first save, replace afterwards."""

    def __init__(
        self, api_client: Any, namespace: str, name: str = CONFIGMAP, key: str = KEY
    ) -> None:
        import kubernetes

        self.core = kubernetes.client.CoreV1Api(api_client)
        self.namespace, self.name, self.key = namespace, name, key

    def load(self) -> str | None:
        from kubernetes.client.exceptions import ApiException

        try:
            cm = self.core.read_namespaced_config_map(self.name, self.namespace, _request_timeout=5)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        data = cm.data or {}
        text = data.get(self.key)
        return text if isinstance(text, str) else None

    def save(self, text: str) -> None:
        from kubernetes.client.exceptions import ApiException

        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/name": "perllm-extender"},
            },
            "data": {self.key: text},
        }
        try:
            self.core.patch_namespaced_config_map(
                self.name, self.namespace, {"data": {self.key: text}}, _request_timeout=5
            )
        except ApiException as e:
            if e.status != 404:
                raise
            self.core.create_namespaced_config_map(self.namespace, body, _request_timeout=5)  # type: ignore[arg-type]


def _compact(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def dumps(arms: ArmStore, budget: int | None = None) -> tuple[str, list[str]]:
    """The state document, and the services left out to keep it within `budget` bytes:
    services come in `ArmStore.keys()` order (live, then most recently used), so the
    least worth keeping (expired, oldest) are the ones left out."""
    head = {
        "version": FILE_VERSION,
        "savedAt": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "services": {},
    }
    size = len(_compact(head).encode())
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for k, st in arms.export().items():
        part = _compact(st)
        grow = len(_compact(k).encode()) + 1 + len(part.encode()) + (1 if kept else 0)
        if budget is not None and size + grow > budget:
            dropped.append(k)
            continue
        kept[k] = part
        size += grow
    services = ",".join(f"{_compact(k)}:{kept[k]}" for k in sorted(kept))
    text = _compact(head).replace('"services":{}', '"services":{' + services + "}", 1)
    return text, dropped


def parse(text: str) -> dict[str, dict[str, Any]]:
    """The per-service states in `text`; ValueError naming what is wrong."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{KEY} is not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
        got = doc.get("version") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{KEY}: version {got!r} != {FILE_VERSION}")
    services = doc.get("services")
    if not isinstance(services, dict):
        raise ValueError(f"{KEY}: 'services' is not an object")
    out: dict[str, dict[str, Any]] = {}
    for k, st in services.items():
        why = invalid_service(st)
        if why is None:
            out[str(k)] = st
        else:
            log.warning("learned state of %s dropped: %s", k, why)
    return out


_ARM_FIELDS = ("n", "sum_ratio", "sumsq_ratio", "sum_reward", "plays")
_COUNTS = ("n", "sum_ratio", "sumsq_ratio", "plays")  # sums of counts and ratios: >= 0


def _finite(x: Any, nonneg: bool = True) -> bool:
    ok = isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
    return ok and (not nonneg or x >= 0)


def invalid_service(st: Any) -> str | None:
    """Why one service's entry cannot be imported (None: it can). `ArmStats.import_state`
    trusts its input: a string there failed a decision with a 500 (and lost the entry), a
    NaN or null (Python's JSON reads `NaN`) made the arm infeasible for good, and both
    were saved back."""
    if not isinstance(st, dict) or st.get("version") != STATE_VERSION:
        return f"not a CS-UCB v{STATE_VERSION} state"
    arms = st.get("arms")
    if not isinstance(arms, dict):
        return "'arms' is not an object"
    for key, a in arms.items():
        if "|" not in key:
            return f"arm {key!r} is not <service>|<pool>"
        if not isinstance(a, dict) or not all(f in a for f in _ARM_FIELDS):
            return f"arm {key!r} lacks one of {', '.join(_ARM_FIELDS)}"
        bad = [f for f in _ARM_FIELDS if not _finite(a[f], f in _COUNTS)]
        if bad:
            return f"arm {key!r}: {', '.join(bad)} not a finite number (>= 0 for counts)"
    outputs = st.get("outputs", {})
    if not isinstance(outputs, dict):
        return "'outputs' is not an object"
    for svc, hist in outputs.items():
        if not isinstance(hist, list) or not all(_finite(x) for x in hist):
            return f"outputs of {svc!r} are not a list of finite counts >= 0"
        if len(hist) == OUT_BINS and not sum(hist) > 0:
            return f"outputs of {svc!r} are all zero"
    for f in ("total", "rounds", "violations"):
        if f in st and not _finite(st[f]):
            return f"{f!r} is not a finite number >= 0"
    return None


BUDGET_BYTES = 900 * 1024  # of the ConfigMap's 1 MiB (metadata and the key take a little)
WARN_BYTES = 768 * 1024


class StateKeeper:
    """Restores the ArmStore on start, saves it every `interval_s` and on stop, within
    `budget_bytes`."""

    def __init__(
        self,
        store: StateStore,
        arms: ArmStore,
        *,
        interval_s: float = 60.0,
        on_save: Callable[[bool], None] | None = None,
        budget_bytes: int = BUDGET_BYTES,
        warn_bytes: int = WARN_BYTES,
        on_size: Callable[[int, int], None] | None = None,
    ) -> None:
        self.store, self.arms, self.interval_s = store, arms, interval_s
        self.on_save = on_save or (lambda _ok: None)
        self.budget_bytes, self.warn_bytes = budget_bytes, warn_bytes
        self.on_size = on_size or (lambda _bytes, _dropped: None)  # (bytes, services left out)
        self.restored = 0
        self.last_error: str | None = None
        self.unread: str | None = None  # why the stored state could not be read (yet)
        self.size_bytes = 0  # of the last document saved
        self.left_out = 0  # services left out of it (budget)
        self.size_warning: str | None = None
        self._loop = Periodic("perllm-state", self.save, lambda: self.interval_s)
        self._save_lock = threading.Lock()

    def restore(self) -> int:
        """Load the stored state into the ArmStore; returns how many services. Never
        raises: absent or unreadable state means starting fresh. A store that cannot be
        read (API down, RBAC) is not a fresh start: saving waits until a later read
        succeeds (retried before each save), or it would overwrite what is stored."""
        try:
            text = self.store.load()
        except Exception as e:
            why = _why(e)
            if why != self.unread:
                log.warning(
                    "cannot read the learned state (%s): deciding on what is learned from now, "
                    "not saving until the stored state is read (retried before each save)",
                    why,
                )
            self.unread = why
            self.last_error = f"stored state not read yet ({why}): not saving over it"
            return 0
        late, self.unread = self.unread is not None, None
        self.last_error = None
        if text is None:
            log.info("no learned state stored yet: starting fresh")
            return 0
        try:
            states = parse(text)
        except ValueError as e:
            log.warning("learned state unreadable (%s): starting fresh", e)
            self.last_error = str(e)
            return 0
        replaced = len(set(states) & set(self.arms.keys())) if late else 0
        self.arms.load(states)  # the stored history wins over what was learned meanwhile
        self.restored = len(states)
        log.info(
            "restored the learned state of %d services%s",
            len(states),
            f" (late: it replaced what {replaced} of them learned since start)" if late else "",
        )
        return len(states)

    def _sized(self) -> str:
        """The document to save, within the budget; sets the size signals."""
        self.arms.expire()
        text, dropped = dumps(self.arms, self.budget_bytes)
        size = len(text.encode())
        warn = None
        if dropped:
            warn = (
                f"learned state over its {self.budget_bytes} B budget: {len(dropped)} "
                f"services left out of the save (expired and least recently used first)"
            )
        elif size > self.warn_bytes:
            warn = (
                f"learned state is {size} B, near its {self.budget_bytes} B budget "
                f"(ConfigMap limit 1 MiB): {len(self.arms)} services"
            )
        if warn is not None and (self.size_warning is None or len(dropped) != self.left_out):
            log.warning("%s", warn)  # once per crossing, and when what is left out changes
        self.size_warning, self.size_bytes, self.left_out = warn, size, len(dropped)
        self.on_size(size, len(dropped))
        return text

    def save(self) -> bool:
        with self._save_lock:
            if self.unread is not None:
                self.restore()
                if self.unread is not None:  # saving now would overwrite the stored state
                    self.on_save(False)
                    return False
            try:
                self.store.save(self._sized())
            except Exception as e:
                why = _why(e)
                if why != self.last_error:  # once per distinct error
                    log.warning("cannot save the learned state: %s", why)
                self.last_error = why
                self.on_save(False)
                return False
            self.last_error = None
            self.on_save(True)
            return True

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._loop.stop(timeout)
        self.save()


def _why(e: Exception) -> str:
    status = getattr(e, "status", None)
    if status is not None:
        return f"HTTP {status} {getattr(e, 'reason', '') or ''}".strip()
    return f"{type(e).__name__}: {e}"

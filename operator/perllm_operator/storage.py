"""kopf's record of the last handled spec, as a hash: bounded, whatever the spec's size.

kopf's `AnnotationsDiffBaseStorage` keeps the whole last-handled object in an annotation.
Annotations are limited to 256 KiB in all, and every write kopf makes (its finalizer's
removal included) carries them, so an oversized spec could block even deletion. This
storage keeps only a SHA-256 of the same essence (`perllm.io/last-handled-hash`): an
equal hash means "unchanged" (the essence is given back as is), another one means
"changed" (an empty essence, so kopf runs the update handlers). The operator's handlers
never read kopf's `old`/`diff`, so nothing else is lost. The full-object annotation of
earlier versions is removed at the next store.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, cast

import kopf

from perllm import labels

KEY = "last-handled-hash"
LEGACY_KEY = "last-handled-configuration"


def digest(essence: object) -> str:
    text = json.dumps(essence, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class HashDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    def __init__(self) -> None:
        super().__init__(prefix=labels.DOMAIN, key=KEY)

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        """kopf's essence without any `perllm.io/` annotation: kopf's own records live
        there, and before its marker annotation exists kopf would count them in."""
        essence = super().build(body=body, extra_fields=extra_fields)
        ann = (essence.get("metadata") or {}).get("annotations") or {}
        for key in [k for k in ann if k.startswith(f"{labels.DOMAIN}/")]:
            del ann[key]
        self.remove_empty_stanzas(essence)
        return essence

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        stored = body.metadata.annotations.get(f"{labels.DOMAIN}/{KEY}")
        if stored is None:
            return None
        current = self.build(body=body)
        return current if digest(current) == stored else cast(kopf.BodyEssence, {})

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        patch.metadata.annotations[f"{labels.DOMAIN}/{KEY}"] = digest(essence)
        if f"{labels.DOMAIN}/{LEGACY_KEY}" in body.metadata.annotations:
            patch.metadata.annotations[f"{labels.DOMAIN}/{LEGACY_KEY}"] = None
        self._store_marker(prefix=self.prefix, patch=patch, body=body)

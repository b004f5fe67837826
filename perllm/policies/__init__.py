"""Placement policies behind one interface (`base.Policy`), and their registry."""

from __future__ import annotations

from collections.abc import Callable

from perllm.policies.base import Policy

_FACTORIES: dict[str, Callable[[], Policy]] = {}


def register(name: str, factory: Callable[[], Policy]) -> None:
    _FACTORIES[name] = factory


def _load() -> None:
    if _FACTORIES:
        return
    from perllm.policies import clairvoyant, fineinfer, perllm_policy, rewardless, simple

    for mod in (perllm_policy, simple, clairvoyant, fineinfer, rewardless):
        for cls in mod.POLICIES:
            register(cls.name, cls)
    try:  # AGOD needs the bench extra (JAX)
        from perllm.policies import agod  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        return
    for cls in agod.POLICIES:
        register(cls.name, cls)


def available() -> list[str]:
    _load()
    return list(_FACTORIES)


def make(name: str) -> Policy:
    _load()
    if name not in _FACTORIES:
        raise KeyError(f"unknown policy {name!r}; available: {', '.join(_FACTORIES)}")
    return _FACTORIES[name]()

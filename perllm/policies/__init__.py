"""Placement policies behind one interface (`base.Policy`), and their registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from perllm.policies.base import Policy

_FACTORIES: dict[str, Callable[[], Policy]] = {}


def register(name: str, factory: Callable[[], Policy]) -> None:
    _FACTORIES[name] = factory


def name_error(names: Sequence[str], option: str = "--policy") -> str | None:
    """Why the policies `names` cannot be run together (`perllm simulate`, `perllm sweep`):
    an unknown name, or one named twice (its runs would be done twice and merged into one
    entry, as if they were seeds); None if they can."""
    avail = available()
    unknown = [n for n in names if n not in avail]
    if unknown:
        return (
            f"{option}: unknown policy {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(avail)}"
        )
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"{option}: a policy is named twice: {', '.join(map(repr, twice))}"
    return None


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

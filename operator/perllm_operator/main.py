"""Run the operator in-process (kopf's CLI, standalone: no peering objects)."""

from __future__ import annotations

from collections.abc import Sequence

from perllm_operator import HANDLERS_MODULE


def kopf_args(namespaces: Sequence[str] = (), liveness: str | None = None,
              verbose: bool = False) -> list[str]:
    args = ["run", "--standalone", "-m", HANDLERS_MODULE]
    args += [f"--namespace={ns}" for ns in namespaces] if namespaces else ["--all-namespaces"]
    if liveness:
        args.append(f"--liveness={liveness}")
    if verbose:
        args.append("--verbose")
    return args


def run(namespaces: Sequence[str] = (), liveness: str | None = None,
        verbose: bool = False) -> None:
    """Blocks until the operator stops (SIGINT/SIGTERM)."""
    import kopf.cli

    kopf.cli.main(args=kopf_args(namespaces, liveness, verbose), prog_name="perllm operator",
                  standalone_mode=True)

"""Fixed-seed simulations whose outcomes are pinned bit for bit (`test_golden.py`).

`python tests/unit/golden_runs.py --write` regenerates `golden.json` from the code as it
is; a refactor that must not change behaviour leaves the digests unchanged.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from perllm import policies
from perllm.scenario import load_scenario
from perllm.world.sim import simulate

GOLDEN = Path(__file__).with_name("golden.json")
# (scenario, policy, seed, duration_s): short runs, every path of the decision code.
RUNS = [
    ("paper-llama2-7b", "perllm", 1, 300.0),
    ("paper-llama2-7b", "perllm", 2, 300.0),
    ("paper-yi-9b", "perllm", 1, 300.0),
    ("flash-crowd", "perllm", 1, 600.0),
    ("bandwidth-collapse", "perllm", 1, 600.0),
    ("large-fleet", "perllm", 1, 20.0),
    ("paper-llama2-7b", "greedy-deadline", 1, 300.0),
    ("paper-llama2-7b", "clairvoyant-greedy", 1, 300.0),
    ("paper-llama2-7b", "fineinfer", 1, 300.0),
    ("paper-llama2-7b", "cloud-only", 1, 300.0),
    ("demo", "perllm", 1, 300.0),
]


# The RunResult arrays whose bytes are pinned, by attribute name.
DIGESTED = ("server", "time", "met", "cost", "e_infer_attr", "energy_infer_j", "energy_idle_j")


def digest(scenario: str, policy: str, seed: int, duration_s: float) -> dict[str, str]:
    sc = load_scenario(scenario).model_copy(update={"duration_s": duration_s})
    r = simulate(sc, policies.make(policy), seed)
    return {
        name: hashlib.sha256(np.ascontiguousarray(getattr(r, name)).tobytes()).hexdigest()[:16]
        for name in DIGESTED
    }


def key(run: tuple[str, str, int, float]) -> str:
    return "{}|{}|{}|{:g}".format(*run)


if __name__ == "__main__":
    if "--write" not in sys.argv:
        sys.exit("usage: python tests/unit/golden_runs.py --write")
    data = {key(r): digest(*r) for r in RUNS}
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({len(data)} runs)")

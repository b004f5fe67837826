"""What a scenario can run, checked at load (`perllm.scenario.load`): each (class, server)
profile finite and a request alone within `MAX_REQUEST_S`, arrival peaks within the
contract's rate, prompts within the model's context, links within their bounds over any
bandwidth window or trace, and the run's size in memory. Each refusal names the field."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

from perllm.contract import ServiceSpec
from perllm.scenario.base import ScenarioError
from perllm.scenario.model import Scenario

# A class's typical request (its mean lengths) alone on an idle server takes at most this
# long: above the longest deadline the contract allows (86,400 s + 60 s × 131,072 output
# tokens, 7.9e6 s). A `hardware:` or `models:` entry of 1e-300 TFLOPS or κ made each
# request take 1e300 s and its energy overflow.
MAX_REQUEST_S = 1e7


def check_profiles(sc: Scenario, specs: Sequence[ServiceSpec], source: str) -> None:
    """Each (class, server) a class may run on has a finite profile of at most
    `MAX_CONCURRENCY` concurrent requests, finite positive rates, and a typical request of
    at most `MAX_REQUEST_S` (the catalogue's own entries are far within): each field of an
    entry is bounded, but a combination of them (a tiny params_b under a large TFLOPS)
    could still reach inf, 0 or NaN in the cost model."""
    import numpy as np

    from perllm.costmodel import cpu_times, gpu_times
    from perllm.profiles import MAX_CONCURRENCY, perf_profile

    cat = sc.catalogue
    for k, c in enumerate(sc.workload.classes):
        variants = specs[k].variants
        for i, s in enumerate(sc.servers):
            v = next((v for v in variants if v.tier == s.tier), None)
            if v is None or s.tier not in c.allowed_tiers:
                continue
            hw, model = cat.hardware[s.hardware], cat.models[c.model]
            where = (
                f"servers[{i}].hardware: {s.hardware} running workload.classes[{k}].model "
                f"{c.model} ({v.precision.value})"
            )
            entries = (
                f"check {_entry(sc, 'hardware', s.hardware)} and {_entry(sc, 'models', c.model)}"
            )
            try:
                prof = perf_profile(model, v.precision, hw)
                conc: float = prof.max_conc
            except (OverflowError, ZeroDivisionError):  # weights or speeds beyond a float
                conc = math.inf
            if conc > MAX_CONCURRENCY:
                why = (
                    "its max_seqs"
                    if hw.kind == "gpu"
                    else "prefill_coeff / params_b × weights / mem_bw_eff_gbps"
                )
                raise ScenarioError(
                    f"{source}: invalid scenario:\n  {where} would run {conc:,.6g} requests at "
                    f"once ({why}), more than {MAX_CONCURRENCY:,}: {entries}"
                )
            gpu = hw.kind == "gpu"
            rates = (
                [
                    ("prefill rate", "prefill_mfu × peak_tflops / params_b", prof.r_pf, "tokens/s"),
                    ("decode step", "step_overhead_s + weights / mem_bw_eff_gbps", prof.step0, "s"),
                    (
                        "decode compute per sequence",
                        "params_b / (decode_flops_eff × peak_tflops)",
                        prof.per_seq_flop_s,
                        "s a token",
                    ),
                ]
                if gpu
                else [("prefill rate", "prefill_coeff / params_b", prof.pp, "tokens/s")]
            )
            for label, formula, value, unit in rates:
                # (A rate divides: 0 is as wrong as inf; a decode time may be 0.)
                if not math.isfinite(value) or (unit == "tokens/s" and value <= 0):
                    raise ScenarioError(
                        f"{source}: invalid scenario:\n  {where}: its {label} ({formula}) is "
                        f"{value:g} {unit}: {entries}"
                    )
            l_in, l_out = specs[k].traffic.prompt_tokens, specs[k].traffic.output_tokens
            lengths = (np.float64(l_in), np.float64(l_out), 1.0)
            with np.errstate(all="ignore"):  # (an overflow is the inf refused below)
                if gpu:
                    pre, dec = gpu_times(
                        *lengths, prof.kv_bytes, prof.bw, prof.r_pf, prof.ttft0, prof.step0,
                        prof.per_seq_flop_s,
                    )  # fmt: skip
                else:
                    pre, dec = cpu_times(
                        *lengths, prof.weights_bytes, prof.kv_bytes, prof.bw, prof.pp, prof.kappa
                    )
            alone = float(pre + dec)
            if not alone <= MAX_REQUEST_S:  # (NaN too)
                fields = (
                    "ttft_overhead_s, prefill_mfu × peak_tflops / params_b, step_overhead_s, "
                    "mem_bw_eff_gbps, decode_flops_eff × peak_tflops / params_b"
                    if gpu
                    else "prefill_coeff / params_b, kappa, mem_bw_eff_gbps / weights"
                )
                raise ScenarioError(
                    f"{source}: invalid scenario:\n  {where}: its typical request "
                    f"({l_in:,.0f} prompt and {l_out:,.0f} output tokens) would take "
                    f"{alone:,.6g} s alone on an idle server (prefill {float(pre):.3g} s, "
                    f"decode {float(dec):.3g} s; from {fields}), more than "
                    f"{MAX_REQUEST_S:,.0f} s: {entries}"
                )


def _entry(sc: Scenario, kind: str, name: str) -> str:
    """Where a catalogue entry comes from: the scenario's own (its YAML path) or the
    built-in catalogue (perllm/data/catalogue.yaml)."""
    own = sc.hardware if kind == "hardware" else sc.models
    return f"{kind}.{name}" if name in own else f"the catalogue's {kind} {name!r}"


def check_peak_rates(sc: Scenario, source: str) -> None:
    """No class arrives faster than the contract's per-service rate (`MAX_RATE_RPS`) in
    any of its rate windows: a window factor is otherwise unbounded, and drawing
    factor × rate × duration arrivals does not end (1e7 × 2 req/s for 5 s: 1e8)."""
    from perllm.contract import MAX_RATE_RPS
    from perllm.world.arrivals import rate_factor

    wl = sc.workload
    for k, c in enumerate(wl.classes):
        windows = wl.windows(k)
        p = wl.process(k)
        if not windows or (p is not None and p.kind == "trace"):
            continue
        edges = {0.0, *(w.at_s for w in windows), *(w.until_s for w in windows)}
        at = max((e for e in edges if e < sc.duration_s), key=lambda e: rate_factor(windows, e))
        peak = sc.declared_rate(k) * rate_factor(windows, at)
        if peak > MAX_RATE_RPS:
            own = c.arrivals is not None and c.arrivals.rate_windows is not None
            field = "workload." + (f"classes[{k}].arrivals." if own else "") + "rate_windows"
            raise ScenarioError(
                f"{source}: invalid scenario:\n  {field}: class {c.name!r} would arrive at "
                f"{peak:,.6g} req/s from {at:g} s, more than {MAX_RATE_RPS:,.0f} req/s a class"
            )


def check_context(sc: Scenario, source: str) -> None:
    """A class whose every request would be clipped to its model's context is refused:
    the world clips each drawn prompt so that prompt + output fit the context (and the
    output to half of it), which for a long tail is the documented cut, but when even the
    shortest prompt (or output) is cut the class runs other lengths than it declares, in
    silence (a constant 10,000-token prompt ran as 4,095 tokens on a 4,096 context)."""
    import numpy as np

    from perllm.scenario.dists import dist_min
    from perllm.world.workload import whole_tokens

    cat = sc.catalogue
    for k, c in enumerate(sc.workload.classes):
        context = cat.models[c.model].context
        lin, lout = (np.array([dist_min(d)]) for d in (c.input_tokens, c.output_tokens))
        # (Clipping is monotone: if the shortest pair is cut, so is every pair.)
        cin, cout = whole_tokens(lin, lout, context)
        want_in, want_out = (int(np.maximum(np.round(x[0]), 1)) for x in (lin, lout))
        field = f"workload.classes[{k}]"
        if cout[0] < want_out:
            raise ScenarioError(
                f"{source}: invalid scenario:\n  {field}.output_tokens: class {c.name!r}'s "
                f"shortest output ({want_out:,} tokens) is more than half of {c.model}'s "
                f"context of {context:,} tokens: every output would be clipped to "
                f"{int(cout[0]):,} tokens"
            )
        if cin[0] < want_in:
            raise ScenarioError(
                f"{source}: invalid scenario:\n  {field}.input_tokens: class {c.name!r}'s "
                f"shortest prompt ({want_in:,} tokens) and shortest output ({int(cout[0]):,}) "
                f"do not fit {c.model}'s context of {context:,} tokens: every prompt would be "
                f"clipped to at most {int(cin[0]):,} tokens"
            )


def check_links(sc: Scenario, source: str) -> None:
    """Every link's nominal bandwidth, with the bandwidth windows over it, is at least the
    contract's `MIN_LINK_MBPS` and at most its `MAX_LINK_MBPS` in every slot: each window's
    factor is only > 0, and a factor of 1e-300 made every upload over the link take inf
    seconds (one of 1e300, the bound's bits per second overflow). (A sweep's links,
    set with `model_copy`, were never validated: checked here too, at most
    `MAX_LINK_MBPS` as well: `--cloud-mbps 1e12` ran.) With a
    `bandwidth.trace` the nominal bandwidths are the file's, checked as a run reads it."""
    from perllm.contract import MAX_LINK_MBPS, MIN_LINK_MBPS
    from perllm.world.arrivals import rate_factor

    floor = f"below the {MIN_LINK_MBPS:g} Mbps (1 kbit/s) a link has at least"
    ceiling = f"above the {MAX_LINK_MBPS:,.0f} Mbps (10 Tbit/s) a link has at most"
    for i, s in enumerate(sc.servers):
        mbps = s.link.bandwidth_mbps
        if not MIN_LINK_MBPS <= mbps <= MAX_LINK_MBPS:
            raise ScenarioError(
                f"{source}: invalid scenario:\n  servers[{i}].link.bandwidth_mbps: "
                f"{mbps:g} Mbps is {floor if mbps < MIN_LINK_MBPS else ceiling}"
            )
    windows = sc.bandwidth.windows
    if sc.bandwidth.trace or not windows:
        return
    # The world applies a window to the slots that start in it: the factors a link sees
    # are those of the first slot from each window edge on (and, for rounding, the one
    # before it; any slot's factor is one the link sees).
    n_slots = math.ceil(sc.duration_s / sc.slot_s)
    edges = {0.0, *(w.at_s for w in windows), *(w.until_s for w in windows)}
    slots = sorted(
        {k for e in edges for d in (0, 1) if 0 <= (k := math.ceil(e / sc.slot_s) - d) < n_slots}
    )
    # windows taken -> ((lowest factor, at), (highest factor, at))
    extremes: dict[tuple[int, ...], tuple[tuple[float, float], tuple[float, float]]] = {}
    for name, s in sc.expanded_servers():
        mine = tuple(
            j
            for j, w in enumerate(windows)
            if w.servers is None or any(w.selects(p, name, s.tier) for p in w.servers)
        )
        if not mine:
            continue
        if mine not in extremes:
            ws = [windows[j] for j in mine]
            seen = [(rate_factor(ws, k * sc.slot_s), k * sc.slot_s) for k in slots]
            extremes[mine] = (min(seen), max(seen, key=lambda f: (f[0], -f[1])))
        for factor, at in extremes[mine]:
            mbps = s.link.bandwidth_mbps * factor
            # (A boost is bounded too: a factor of 1e300 overflowed the upload times.)
            if not MIN_LINK_MBPS <= mbps <= MAX_LINK_MBPS:
                raise ScenarioError(
                    f"{source}: invalid scenario:\n  bandwidth.windows: server {name!r}'s link "
                    f"would be {mbps:.3g} Mbps from {at:g} s ({s.link.bandwidth_mbps:g} Mbps × "
                    f"the windows' factor {factor:.3g}), "
                    f"{floor if mbps < MIN_LINK_MBPS else ceiling}"
                )


# What one run holds in memory: its requests (drawn up front, ~0.5 kB each in the world)
# and its bandwidth matrix (slots × servers, a float each, several copies). A day at
# 100 req/s is 8.6 M requests; a day of 1 s slots on 231 servers is 20 M cells.
MAX_REQUESTS = 10_000_000
MAX_SLOT_CELLS = 20_000_000


def check_size(sc: Scenario, source: str) -> None:
    """A run's expected arrivals and its slots × servers are bounded: a long `duration_s`
    (or a short `slot_s`) otherwise ran out of memory drawing them (an ArrayMemoryError
    traceback for 1e12 s)."""
    from perllm.world.arrivals import rate_factor

    wl = sc.workload
    expected = 0.0
    for k in range(len(wl.classes)):
        p = wl.process(k)
        if (p is None and wl.arrivals.kind == "trace") or (p is not None and p.kind == "trace"):
            continue  # (a trace's rows are bounded as it is read)
        w = wl.windows(k)
        edges = sorted({0.0, sc.duration_s, *(x.at_s for x in w), *(x.until_s for x in w)})
        edges = [e for e in edges if e <= sc.duration_s]
        expected += sc.declared_rate(k) * sum(
            (b - a) * rate_factor(w, a) for a, b in itertools.pairwise(edges)
        )
    if expected > MAX_REQUESTS:
        raise ScenarioError(
            f"{source}: invalid scenario:\n  duration_s: {sc.duration_s:g} s would draw "
            f"{expected:,.6g} requests, more than {MAX_REQUESTS:,} a run (shorten the run "
            "or lower the rate)"
        )
    cells = math.ceil(sc.duration_s / sc.slot_s) * len(sc.expanded_servers())
    if cells > MAX_SLOT_CELLS:
        raise ScenarioError(
            f"{source}: invalid scenario:\n  duration_s: {sc.duration_s:g} s in slots of "
            f"{sc.slot_s:g} s on {len(sc.expanded_servers())} servers is {cells:,} "
            f"slot-server cells of bandwidth, more than {MAX_SLOT_CELLS:,} (a longer slot_s "
            "or a shorter run)"
        )

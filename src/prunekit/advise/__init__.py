"""``prunekit advise``: what each kind of pruning really buys on this machine, measured.

For one model, ``advise`` builds a pruned copy per kind of pruning and level
(``strategies.build_variants``: unstructured on dense and on CSR kernels, 2:4 on sparse tensor
cores, uniform channel pruning, residual blocks dropped), times every copy interleaved with
the dense model (``prunekit.measure.compare.compare_latency``: the speedup of a row is the
median over rounds of the per-round ratio dense / pruned, so a drifting machine cannot fake
it) and turns the rows into one sentence (``recommend.recommend``).

The timing is injectable: ``measure`` is any callable with ``interleaved``'s signature that
returns one ``Comparison`` per batch size, so tests run the whole advice on preset timings.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from prunekit.advise.recommend import label, recommend
from prunekit.advise.strategies import Variant, build_variants
from prunekit.errors import InputSpecError, PrunekitError
from prunekit.inputs import InputSpec
from prunekit.measure.compare import Comparison, compare_latency
from prunekit.measure.latency import TimingPolicy

FORMAT = "prunekit-advise"
DEFAULT_ROUNDS = 5
# one model's share of a round: a few calls, ~0.1 s (compare.ROUND_POLICY takes 0.3 s and
# more; advise times ten models, so each share is kept short and the rounds do the averaging)
ADVISE_POLICY = TimingPolicy(warmup_calls=2, warmup_s=0.0, min_repeats=3, min_time_s=0.1,
                             max_repeats=100, max_time_s=0.5, target_rel_ci=0.05)  # fmt: skip

Measure = Callable[..., list[Comparison]]


def interleaved(models: dict[str, nn.Module], spec: InputSpec, batch_sizes: Sequence[int], *,
                backend: str, device: str, threads: int | None,
                rounds: int) -> list[Comparison]:  # fmt: skip
    """The default ``measure``: every model in one interleaved comparison."""
    return compare_latency(models, spec, batch_sizes, reference="dense", backend=backend,
                           device=device, threads=threads, rounds=rounds,
                           policy=ADVISE_POLICY)  # fmt: skip


def _measure_all(measure: Measure, variants: list[Variant], references: dict[str, nn.Module],
                 spec: InputSpec, batch_sizes: Sequence[int], say: Callable[[str], None],
                 **kwargs: Any) -> list[Comparison]:  # fmt: skip
    """Every measurable variant with its reference in one interleaved run; when that run
    fails (a backend refusing one model), each variant alone, so one failure costs one row."""
    timed = [v for v in variants if v.model is not None]
    models: dict[str, nn.Module] = dict(references)
    models.update({v.key: v.model for v in timed if v.model is not None})
    try:
        return measure(models, spec, batch_sizes, **kwargs)
    except PrunekitError as exc:
        say(f"timing all variants together failed ({exc}); timing each alone")
    merged: list[Comparison] | None = None
    for v in timed:
        assert v.model is not None
        pair = {"dense": references["dense"], v.key: v.model}
        if v.reference != "dense":
            pair[v.reference] = references[v.reference]
        try:
            result = measure(pair, spec, batch_sizes, **kwargs)
        except PrunekitError as exc:
            v.model, v.note = None, f"not timed: {exc}"
            continue
        if merged is None:
            merged = result
        for into, c in zip(merged, result, strict=True):
            into.rounds_ms[v.key] = c.rounds_ms[v.key]
            if v.reference != "dense":
                into.rounds_ms[v.reference] = c.rounds_ms[v.reference]
    if merged is None:  # nothing but the dense model could be timed
        merged = measure({"dense": references["dense"]}, spec, batch_sizes, **kwargs)
    return merged


def rows_of(variants: Sequence[Variant], comparisons: Sequence[Comparison]) -> list[dict[str, Any]]:
    """One row per variant and batch size, variant by variant in table order."""
    rows = []
    for v in variants:
        for c in comparisons:
            row: dict[str, Any] = {
                "strategy": v.strategy, "level": v.level, "kernel": v.kernel,
                "batch_size": c.batch_size, "dense_ms": c.median_ms("dense"), "ms": None,
                "speedup": None, "speedup_range": None, "macs_kept": v.macs_kept,
                "note": v.note,
            }  # fmt: skip
            row["label"] = label(row)  # how the sentence and the report name it
            if v.model is not None and v.key in c.rounds_ms:
                ratios = [d / m for d, m in zip(c.rounds_ms[v.reference], c.rounds_ms[v.key],
                                                strict=True)]  # fmt: skip
                row.update(dense_ms=statistics.median(c.rounds_ms[v.reference]),
                           ms=statistics.median(c.rounds_ms[v.key]),
                           speedup=statistics.median(ratios),
                           speedup_range=[min(ratios), max(ratios)])  # fmt: skip
            rows.append(row)
    return rows


def device_phrase(device: torch.device, threads: int, environment: dict[str, Any]) -> str:
    """How the recommendation names the machine: 'this CPU (2 threads)', 'this GPU (H100)'."""
    if device.type == "cuda":
        return f"this GPU ({environment.get('gpu') or 'CUDA'})"
    return f"this CPU ({threads} thread{'s' if threads != 1 else ''})"


def check_arguments(batch_sizes: Any, device: str, backend: str, threads: int | None,
                    rounds: int) -> torch.device:  # fmt: skip
    """Every check that needs no model; returns the device."""
    from prunekit._checks import check_device_present
    from prunekit.errors import BackendError
    from prunekit.measure.backends import backend_class, check_backend_device

    backend_class(backend)  # an unknown backend: one line naming the known ones
    if str(device) not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise BackendError(f"--device {device}: unsupported device; use cpu or cuda")
    check_backend_device(backend, device)
    check_device_present(device)
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1
                              for b in batch_sizes):  # fmt: skip
        raise InputSpecError(f"batch sizes must be positive integers, got {list(batch_sizes)}")
    if threads is not None and threads < 1:
        raise InputSpecError(f"--threads must be a positive integer, got {threads}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InputSpecError(f"--rounds must be a positive integer, got {rounds}")
    return torch.device(device)


def advise(
    model: nn.Module,
    spec: InputSpec,
    *,
    batch_sizes: Sequence[int] = (1, 32),
    device: str = "cpu",
    backend: str = "eager",
    threads: int | None = None,
    rounds: int = DEFAULT_ROUNDS,
    measure: Measure | None = None,
    model_name: str | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every kind of pruning on ``model`` (not changed) and advise; returns the
    ``advise.json`` record: ``model``, ``device``, ``backend``, ``threads``, ``rows``,
    ``recommendation`` and how it was measured."""
    from prunekit.measure._environment import environment
    from prunekit.measure.params import count_params

    say = log or (lambda _: None)
    dev = check_arguments(list(batch_sizes), device, backend, threads, rounds)
    example = spec.make(1)
    was_training = model.training
    model.eval()
    try:
        from prunekit.measure.macs import count_macs

        dense = {"macs": count_macs(model, example).total, "params": count_params(model).params}
        variants, references = build_variants(model, example, device=dev, backend=backend,
                                              log=say)  # fmt: skip
        timed = sum(v.model is not None for v in variants)
        say(f"timing the dense model and {timed} variants interleaved, {rounds} rounds, "
            f"batch sizes {','.join(map(str, batch_sizes))}")  # fmt: skip
        comparisons = _measure_all(measure or interleaved, variants, references, spec,
                                   list(batch_sizes), say, backend=backend, device=str(dev),
                                   threads=threads, rounds=rounds)  # fmt: skip
    finally:
        model.train(was_training)
    rows = rows_of(variants, comparisons)
    used = comparisons[0].threads if comparisons else (threads or torch.get_num_threads())
    env = environment(dev)
    phrase = device_phrase(dev, used, env)
    return {
        "format": FORMAT,
        "version": 1,
        "model": model_name,
        "device": dev.type,
        "device_name": env.get("gpu") if dev.type == "cuda" else env.get("cpu"),
        "backend": backend,
        "threads": used,
        "batch_sizes": list(batch_sizes),
        "rounds": rounds,
        "input": example.describe(),
        "dense": dense,
        "rows": rows,
        "recommendation": recommend(rows, phrase),
        "environment": env,
    }


__all__ = ["ADVISE_POLICY", "advise", "build_variants", "interleaved", "recommend", "rows_of"]

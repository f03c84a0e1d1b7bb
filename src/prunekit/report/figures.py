"""The report's plots: PNG images with a caption and the files they were drawn from.

Every figure is a dict ``{id, title, caption, file, sources, png}``; the page embeds ``png``
as a data URI (one file, no network), ``figures/<id>.png`` holds it for the Markdown, and
``report.json`` lists the rest. A figure whose data the inputs lack is left out, and the
page says why in the section it would have been in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Figure = dict[str, Any]
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    from prunekit.report.masks import figure_png

    return figure_png(fig, dpi=100)


def _figure(fid: str, title: str, caption: str, sources: list[str], fig: Any) -> Figure:
    return {"id": fid, "title": title, "caption": caption, "file": f"figures/{fid}.png",
            "sources": sorted(set(sources)), "png": _png(fig)}  # fmt: skip


def sensitivity_figure(run: dict[str, Any], index: int) -> Figure | None:
    path = run.get("sensitivity_file")
    if not path:
        return None
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    groups = data.get("groups") or {}
    if not groups:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for key, group in groups.items():
        points = sorted(group.get("points", []), key=lambda p: p["ratio"])
        ax.plot([0] + [p["ratio"] for p in points], [0] + [p["drop"] for p in points],
                marker=".", label=f"{key} ({group.get('size')})")  # fmt: skip
    ax.set_xlabel("fraction of the group's channels removed")
    ax.set_ylabel(f"drop of {data.get('metric', 'the metric')} (higher = worse)")
    ax.set_yscale("symlog", linthresh=1e-3)
    ax.grid(alpha=0.3)
    if len(groups) <= 16:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return _figure(
        f"sensitivity-{index}", f"Sensitivity per group: {run['name']}",
        f"How much {data.get('metric', 'the metric')} drops when one group alone loses a "
        f"fraction of its channels, measured on {data.get('samples', 'the calibration')} "
        "samples before pruning; flat curves can lose more. The plan keeps more of steep ones.",
        [path], fig,
    )  # fmt: skip


def widths_figure(runs: list[dict[str, Any]]) -> Figure | None:
    shown = [r for r in runs if r.get("widths")]
    if not shown:
        return None
    plt = _pyplot()
    names = list(dict.fromkeys(f"{w['name']} ({w['unit']})" for r in shown for w in r["widths"]))
    fig, ax = plt.subplots(figsize=(8, max(2.5, 0.28 * len(names) * max(1, len(shown)) + 1)))
    height = 0.8 / len(shown)
    for k, run in enumerate(shown):
        kept = {f"{w['name']} ({w['unit']})": (w["after"] / w["before"] if w["before"] else 0.0)
                for w in run["widths"]}  # fmt: skip
        ys = [i + k * height for i in range(len(names))]
        ax.barh(ys, [kept.get(n, float("nan")) for n in names], height=height,
                color=COLOURS[k % len(COLOURS)], label=run["name"])  # fmt: skip
    before = {f"{w['name']} ({w['unit']})": w["before"] for r in shown for w in r["widths"]}
    ax.set_yticks([i + 0.4 - height / 2 for i in range(len(names))])
    ax.set_yticklabels([f"{n} [{before[n]}]" for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("fraction kept (1 = the dense width, shown in brackets)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    units = sorted({w["unit"] for r in shown for w in r["widths"]})
    return _figure(
        "widths", "Per-layer widths after pruning",
        f"The {', '.join(units)} each layer or group keeps, as a fraction of its dense width "
        "(in brackets).",
        [r["files"].get("widths", r["path"]) for r in shown], fig,
    )  # fmt: skip


def _first_latency(run: dict[str, Any]) -> dict[str, Any] | None:
    rows = sorted(run.get("latency") or [], key=lambda r: r["batch_size"])
    return rows[0] if rows else None


def tradeoff_figure(runs: list[dict[str, Any]]) -> Figure | None:
    """Latency and accuracy against MACs for the dense model and every run's final model."""
    points = []
    for run in runs:
        macs, acc = run["macs"], run["accuracy"]
        lat = _first_latency(run)
        if macs["final"] is None:
            continue
        points.append((run["name"], macs["final"], lat and lat["final_ms"], acc["final"]))
    if not points:
        return None
    dense = runs[0]
    lat0 = _first_latency(dense)
    dense_point = ("dense", dense["macs"]["dense"], lat0 and lat0["dense_ms"],
                   dense["accuracy"]["dense"])  # fmt: skip
    plt = _pyplot()
    batch = lat0["batch_size"] if lat0 else None
    panels = [(2, f"latency at batch {batch} (ms)")] if lat0 else []
    if any(p[3] is not None for p in [dense_point, *points]):
        panels.append((3, f"{dense['accuracy']['metric'] or 'accuracy'} (held out)"))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (pos, label) in zip(axes[0], panels, strict=True):
        for k, p in enumerate([dense_point, *points]):
            if p[pos] is None or p[1] is None:
                continue
            ax.scatter(p[1], p[pos], color="black" if k == 0 else COLOURS[(k - 1) % 7],
                       marker="s" if k == 0 else "o", zorder=3)  # fmt: skip
            ax.annotate(p[0], (p[1], p[pos]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7)  # fmt: skip
        if pos == 3:
            front = _pareto([(p[1], p[3]) for p in [dense_point, *points]
                             if p[1] is not None and p[3] is not None])  # fmt: skip
            if len(front) > 1:
                ax.plot(*zip(*front, strict=True), color="grey", lw=0.8, ls="--",
                        label="Pareto front")  # fmt: skip
                ax.legend(fontsize=7)
        ax.set_xlabel("MACs per sample")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    sources = [run["files"].get(k, run["path"]) for run in runs
               for k in ("macs", "latency", "accuracy") if k in run["files"]]  # fmt: skip
    return _figure(
        "tradeoff", "Latency and accuracy against MACs",
        "Every model the inputs measured: the dense model (square) and each run's final model. "
        "Left: measured latency (median of interleaved rounds). Right: held-out accuracy; the "
        "dashed line joins the models no other beats on both MACs and accuracy.",
        sources or [r["path"] for r in runs], fig,
    )  # fmt: skip


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated by another with no more MACs and no less accuracy, by MACs."""
    front: list[tuple[float, float]] = []
    for macs, acc in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or acc > front[-1][1]:
            front.append((macs, acc))
    return front


def latency_figure(runs: list[dict[str, Any]]) -> Figure | None:
    shown = [r for r in runs if r.get("latency")]
    if not shown:
        return None
    plt = _pyplot()
    batches = sorted({row["batch_size"] for r in shown for row in r["latency"]})
    fig, axes = plt.subplots(1, len(batches), figsize=(4 * len(batches) + 1, 3.6), squeeze=False)
    for ax, batch in zip(axes[0], batches, strict=True):
        labels: list[str] = []
        values: list[float] = []
        colours: list[str] = []
        for k, run in enumerate(shown):
            row = next((r for r in run["latency"] if r["batch_size"] == batch), None)
            if row is None:
                continue
            if not labels:
                labels.append("dense")
                values.append(row["dense_ms"])
                colours.append("black")
            labels.append(run["name"])
            values.append(row["final_ms"])
            colours.append(COLOURS[k % len(COLOURS)])
        ax.bar(range(len(values)), values, color=colours)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=7)
        ax.set_ylabel("ms per batch (median)")
        ax.set_title(f"batch {batch}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _figure(
        "latency", "Measured latency, dense and pruned",
        "Median milliseconds per batch from interleaved rounds (dense and pruned timed in "
        "alternation on the same machine), per batch size.",
        [r["files"]["latency"] for r in shown], fig,
    )  # fmt: skip


def density_figure(runs: list[dict[str, Any]]) -> Figure | None:
    shown = [r for r in runs if r.get("sparsity")]
    if not shown:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / len(shown)
    for k, run in enumerate(shown):
        layers = run["sparsity"]
        ax.bar([i + k * width for i in range(len(layers))], [lay["density"] for lay in layers],
               width=width, color=COLOURS[k % len(COLOURS)], label=run["name"])  # fmt: skip
    longest = max(shown, key=lambda r: len(r["sparsity"]))["sparsity"]
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(longest))])
    ax.set_xticklabels([f"{lay['name']}\n{lay['pattern']}" for lay in longest], rotation=30,
                       ha="right", fontsize=6)  # fmt: skip
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("density (non-zero share)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _figure(
        "density", "Per-layer mask density",
        "The share of each layer's weights that are not zero, and its pattern (unstructured, "
        "N:M). Layers kept denser are the ones the budget could not take weights from cheaply.",
        [r["weights_file"] for r in shown], fig,
    )  # fmt: skip


def mask_figures(run: dict[str, Any], index: int) -> list[Figure]:
    """The sparsest layer's mask and the mask over the feature maps of one input."""
    if not run.get("sparsity") or not run.get("weights_file"):
        return []
    from safetensors.numpy import load_file

    from prunekit.report import masks

    weights = load_file(run["weights_file"])
    layer = min(run["sparsity"], key=lambda lay: lay["density"])
    key = layer["name"] if layer["name"] in weights else f"{layer['name']}.weight"
    out = [_figure(
        f"mask-{index}", f"Weight mask of {layer['name']}: {run['name']}",
        f"Kept (dark) and pruned (white) weights of {layer['name']} ({layer['density']:.1%} "
        "dense, the sparsest layer): rows are output channels or neurons, columns their inputs.",
        [run["weights_file"]], masks.mask_image(weights[key], layer["name"]),
    )]  # fmt: skip
    overlay = _overlay(run, weights, layer["name"])
    if overlay is not None:
        fig, caption, sources = overlay
        out.append(_figure(f"mask-overlay-{index}", f"Mask over the feature maps: {run['name']}",
                           caption, sources, fig))  # fmt: skip
    return out


def _overlay(run: dict[str, Any], weights: dict[str, Any], layer: str) -> Any:
    from prunekit.report import masks

    if run["kind"] == "mcu":
        if "sample.input" not in weights:
            return None
        layer_weights = {k: v for k, v in weights.items() if k.endswith(".weight")}
        fig = masks.mcu_mask_overlay(layer_weights, weights["sample.input"])
        return (
            fig,
            (
                "One test input with, over each pixel, how many first-layer neurons still "
                "read it after pruning, beside every layer's mask."
            ),
            [run["weights_file"]],
        )
    dense_file = run.get("dense_weights_file")
    if not dense_file:
        return None
    from prunekit.errors import PrunekitError
    from prunekit.models import load_model

    try:  # artifacts load as data only; one that names user code is refused, and said
        dense = load_model(str(Path(dense_file).parent))
        sparse = load_model(str(Path(run["weights_file"]).parent))
    except PrunekitError as exc:
        run["notes"].append(f"the mask over the feature maps is not drawn: {exc}")
        return None
    module = layer.removesuffix(".weight")
    example, which = _one_input(run, dense.input_spec)
    fig = masks.mask_overlay(dense.model, sparse.model, module, example)
    caption = (
        f"The input feature maps {module} reads (with the share of their weights kept) "
        "and its output maps for the dense and the sparse model, and where they differ, "
        f"for {which}."
    )
    return fig, caption, [dense_file, run["weights_file"]]


def _one_input(run: dict[str, Any], spec: Any) -> tuple[Any, str]:
    """The first held-out sample of the run's data when it can be loaded, else a seeded
    random input; and which of the two it is, in words for the caption."""
    import torch

    from prunekit.data.specs import load_data
    from prunekit.errors import PrunekitError

    torch.manual_seed(0)
    example = spec.make(1).tensors()[0]
    data_spec = run["accuracy"].get("data")
    if data_spec:
        shape = tuple(example.shape[1:])
        try:
            data = load_data(data_spec, image_size=shape[-1] if len(shape) == 3 else None)
            sample = data.shaped_for(shape).eval[0][0]
            return sample.unsqueeze(0).to(
                example.dtype
            ), f"the first held-out sample of {data_spec}"
        except PrunekitError:
            pass
    return example, "one seeded random input (the run's data could not be loaded)"


def mcu_figure(runs: list[dict[str, Any]]) -> Figure | None:
    shown = [r for r in runs if r.get("mcu") and (r["mcu"].get("flash") or {}).get("total")]
    if not shown:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.4 + 1.0 * len(shown)))
    labels = []
    for k, run in enumerate(shown):
        flash, y = run["mcu"]["flash"], 2 * k
        stored = (run["bytes"].get("deployed") or {}).get("bytes")
        if stored:
            ax.barh(y, stored, color="#2ca02c", label="stored model" if k == 0 else None)
        ax.barh(y + 1, flash["code"], color="#9467bd", label="code" if k == 0 else None)
        ax.barh(y + 1, flash["const_data"], left=flash["code"], color="#1f77b4",
                label="weights and constants" if k == 0 else None)  # fmt: skip
        if run["mcu"].get("budget"):
            ax.plot([run["mcu"]["budget"]] * 2, [y - 0.45, y + 0.45], color="#d62728", lw=2,
                    label="budget (of the stored model)" if k == 0 else None)  # fmt: skip
        labels += [f"{run['name']}: stored model", f"{run['name']}: compiled object"]
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("bytes of flash")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=4)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _figure(
        "flash", "Flash of the compiled C against the budget",
        "The model's stored bytes (weights, biases and scales in their deployed format) "
        "against the budget it was compressed for (red), and the compiled object's flash: "
        "code plus constant data, as the host compiler measured it.",
        [r["files"]["mcu"] for r in shown], fig,
    )  # fmt: skip


def diagnosis_figures(run: dict[str, Any], index: int) -> list[Figure]:
    """The pictures ``prunekit sparsify --visualize`` drew, as they are (already PNGs)."""
    out = []
    for k, picture in enumerate(run.get("diagnosis") or []):
        path = Path(picture["file"])
        image = f" on {Path(picture['image']).name}" if picture.get("image") else ""
        out.append({"id": f"diagnosis-{index}-{k}",
                    "title": f"Diagnosis{image}: {path.stem} ({run['name']})",
                    "caption": picture.get("caption", ""), "file": f"figures/diagnosis-{index}-{k}.png",
                    "sources": [str(path)], "png": path.read_bytes()})  # fmt: skip
    return out


def draw_figures(report: dict[str, Any]) -> list[Figure]:
    from prunekit.report.advice import advice_figure

    runs = report["runs"]
    figures: list[Figure | None] = [tradeoff_figure(runs), latency_figure(runs),
                                    widths_figure(runs)]  # fmt: skip
    drawn_sensitivity: set[str] = set()
    for i, run in enumerate(runs):
        if run.get("sensitivity_file") and run["sensitivity_file"] not in drawn_sensitivity:
            drawn_sensitivity.add(run["sensitivity_file"])
            figures.append(sensitivity_figure(run, i))
    figures.append(density_figure(runs))
    for i, run in enumerate(runs):
        figures.extend(mask_figures(run, i))
        figures.extend(diagnosis_figures(run, i))
    figures.append(mcu_figure(runs))
    figures += [advice_figure(a, k) for k, a in enumerate(report.get("advice") or [])]
    return [f for f in figures if f is not None]

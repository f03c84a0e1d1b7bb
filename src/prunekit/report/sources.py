"""Read what prunekit commands wrote into one record per input: the facts a report shows.

Each reader takes an output directory of one command (``prunekit run``, ``prune``,
``finetune``, ``sparsify``, ``mcu``/``demo``, ``prune --heads``) and returns a plain dict (``RunFacts``
keys below) in which every figure names the file it came from (``files``). Nothing here
loads a model or runs code: the facts are in the JSON records and the safetensors headers.
A figure that was never measured stays ``None`` with a note saying so; none is invented.

RunFacts keys: ``name``, ``kind``, ``path``, ``model`` (``name``), ``accuracy`` (``metric``,
``dense``, ``final``, ``split``, ``samples``, ``split_from``), ``retention``, ``macs`` and
``params`` (``dense``, ``final``, ``reduction``), ``bytes`` (``float32``/``int8``: ``dense``,
``final``; ``deployed``: ``format``, ``bytes``, ``file``), ``latency`` (rows), ``widths``,
``sensitivity_file``, ``mcu``, ``weights_file``, ``files``, ``notes``; a sparsify output adds
``sparsify`` and ``diagnosis``. An ``advise`` output is no run: ``read_advise`` returns its
measured rows and recommendation (``kind: "advise"``), shown in a section of their own.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunekit._files import read_json
from prunekit.errors import InvalidValueError

ARTIFACT_WEIGHTS = "model.safetensors"


class ReportInputError(InvalidValueError):
    """An input of ``prunekit report`` that holds no usable prunekit output."""


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json(path, ReportInputError)
    if not isinstance(data, dict):
        raise ReportInputError(f"{path} does not hold a JSON object")
    return data


def _reduction(dense: float | None, final: float | None) -> float | None:
    return 1 - final / dense if dense and final is not None else None


def _pair(dense: float | None, final: float | None) -> dict[str, Any]:
    return {"dense": dense, "final": final, "reduction": _reduction(dense, final)}


def _bytes(params: Mapping[str, Any], deployed: dict[str, Any] | None) -> dict[str, Any]:
    def times(n: int) -> dict[str, Any]:
        return {k: None if params.get(k) is None else params[k] * n for k in ("dense", "final")}

    return {"float32": times(4), "int8": times(1), "deployed": deployed}


def _artifact_bytes(directory: Path, label: str) -> dict[str, Any] | None:
    weights = directory / ARTIFACT_WEIGHTS
    if not weights.is_file():
        return None
    return {"format": label, "bytes": weights.stat().st_size, "file": str(weights)}


def _empty(path: Path, kind: str, name: str | None) -> dict[str, Any]:
    return {
        "name": name or path.name or str(path), "kind": kind, "path": str(path),
        "model": {"name": None}, "accuracy": {"metric": None, "dense": None, "final": None,
                                              "split": None, "samples": None,
                                              "split_from": None},
        "retention": None, "macs": _pair(None, None), "params": _pair(None, None),
        "bytes": _bytes({}, None), "latency": [], "widths": [], "sensitivity_file": None,
        "mcu": None, "weights_file": None, "files": {}, "notes": [],
    }  # fmt: skip


def latency_rows(verify: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The latency table of a ``verify`` record (``planning.verify.SpeedupReport.to_dict``)."""
    env = verify.get("environment") or {}
    rows = []
    for row in verify.get("rows", []):
        speedup = row.get("measured", row.get("speedup"))
        rows.append({
            "batch_size": row["batch_size"], "backend": verify.get("backend", "eager"),
            "device": verify.get("device", "cpu"), "threads": verify.get("threads"),
            "gpu_name": env.get("gpu"), "cpu_name": env.get("cpu"),
            "dense_ms": row["dense_ms"], "final_ms": row["pruned_ms"],
            "saved_ms": row["dense_ms"] - row["pruned_ms"], "speedup": speedup,
            "ideal": row.get("ideal"),
            "of_ideal": speedup / row["ideal"] if row.get("ideal") else None,
            "stable": row.get("stable"), "speedup_range": row.get("speedup_range"),
            "dense_throughput": 1000 * row["batch_size"] / row["dense_ms"],
            "final_throughput": 1000 * row["batch_size"] / row["pruned_ms"],
        })  # fmt: skip
    return rows


def _widths_of_groups(groups: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": g["group"], "unit": "channels", "before": g["total"], "after": g["kept"]}
            for g in groups]  # fmt: skip


def _accuracy(evaluation: Mapping[str, Any], dense: Mapping[str, Any] | None) -> dict[str, Any]:
    metric = "top1" if evaluation.get("task", "classification") == "classification" else "miou"
    data = evaluation.get("data") or {}
    split = data.get("split") or {}
    return {
        "metric": metric,
        "dense": None if dense is None else dense.get(metric),
        "final": evaluation.get(metric),
        "split": evaluation.get("split", "eval"),
        "samples": evaluation.get("samples"),
        "split_from": split.get("eval_from"),
        "data": data.get("spec"),
    }


def _retention(accuracy: Mapping[str, Any]) -> float | None:
    dense, final = accuracy.get("dense"), accuracy.get("final")
    return final / dense if dense and final is not None else None


# ------------------------------------------------------------------------------------ readers


def read_run(path: Path, name: str | None) -> dict[str, Any]:
    """A ``prunekit run`` directory (``run.json`` and its step directories)."""
    facts = _empty(path, "run", name)
    run = _read_json(path / "run.json")
    if not (isinstance(run, dict) and isinstance(run.get("recipe"), dict)
            and all(isinstance(run.get(k), dict) for k in ("dense", "final"))):  # fmt: skip
        raise ReportInputError(f"{path / 'run.json'} is not a prunekit run record (prunekit run "
                               "writes one with recipe, dense and final)")  # fmt: skip
    recipe = run["recipe"]
    # a reused run directory keeps the outputs of steps the last recipe dropped: only the
    # steps of the run that wrote run.json are read
    steps = set(recipe.get("steps") or [])

    def step_file(step: str, filename: str) -> Path | None:
        found = path / step / filename
        return found if step in steps and found.is_file() else None

    facts["model"] = {"name": recipe.get("model"), "kwargs": recipe.get("model_kwargs"),
                      "input_shape": recipe.get("input_shape")}  # fmt: skip
    files = facts["files"]
    evaluation_file = step_file("evaluate", "evaluate.json")
    if evaluation_file is not None:
        evaluation = _read_json(evaluation_file)
        facts["accuracy"] = _accuracy(evaluation["final"], evaluation["dense"])
        files["accuracy"] = str(evaluation_file)
    elif run.get("final", {}).get("accuracy") is not None:
        data = run.get("data") or {}
        facts["accuracy"] = {"metric": run.get("metric"), "dense": run["dense"]["accuracy"],
                             "final": run["final"]["accuracy"], "split": "eval",
                             "samples": data.get("eval_samples"),
                             "split_from": (data.get("split") or {}).get("eval_from"),
                             "data": data.get("spec")}  # fmt: skip
        files["accuracy"] = str(path / "run.json")
    else:
        facts["notes"].append("accuracy not measured: the recipe has no evaluate step")
    facts["retention"] = _retention(facts["accuracy"])
    dense, final = run.get("dense") or {}, run.get("final") or {}
    facts["macs"] = _pair(dense.get("macs"), final.get("macs"))
    facts["params"] = _pair(dense.get("params"), final.get("params"))
    files["macs"] = files["params"] = str(path / "run.json")
    final_step = next((s for s in ("finetune", "prune") if s in steps), None)
    final_dir = path / final_step if final_step else None
    deployed = (_artifact_bytes(final_dir, "prunekit artifact (safetensors, float32)")
                if final_dir is not None else None)  # fmt: skip
    facts["bytes"] = _bytes(facts["params"], deployed)
    if final_dir is not None and (final_dir / ARTIFACT_WEIGHTS).is_file():
        facts["weights_file"] = str(final_dir / ARTIFACT_WEIGHTS)
        if step_file("train", ARTIFACT_WEIGHTS) is not None:
            facts["dense_weights_file"] = str(path / "train" / ARTIFACT_WEIGHTS)
    verify_file = step_file("verify", "verify.json")
    if verify_file is not None:
        verify = _read_json(verify_file)
        facts["latency"] = latency_rows(verify)
        facts["notes"] += verify.get("findings") or []
        files["latency"] = str(verify_file)
    plan_file, prune_file = step_file("plan", "plan.json"), step_file("prune", "prune.json")
    if plan_file is not None:  # every group, also those the plan left whole
        plan = _read_json(plan_file)
        sizes = plan.get("sizes") or {}
        facts["widths"] = [{"name": k, "unit": "channels", "before": sizes.get(k), "after": v}
                           for k, v in (plan.get("keep") or {}).items()]  # fmt: skip
        files["widths"] = str(plan_file)
    elif prune_file is not None:
        facts["widths"] = _widths_of_groups(_read_json(prune_file).get("groups") or [])
        files["widths"] = str(prune_file)
    sensitivity_file = step_file("sensitivity", "sensitivity.json")
    if sensitivity_file is not None:
        facts["sensitivity_file"] = files["sensitivity"] = str(sensitivity_file)
    return facts


def read_prune(path: Path, name: str | None) -> dict[str, Any]:
    """A ``prunekit prune`` output (``prune.json`` beside the artifact)."""
    facts = _empty(path, "prune", name)
    record = _read_json(path / "prune.json")
    source = record.get("source") or {}
    facts["model"] = {"name": source.get("original") or record.get("model")}
    before, after = record.get("before") or {}, record.get("after") or {}
    facts["macs"] = _pair(before.get("macs"), after.get("macs"))
    facts["params"] = _pair(before.get("params"), after.get("params"))
    facts["files"]["macs"] = facts["files"]["params"] = str(path / "prune.json")
    facts["bytes"] = _bytes(facts["params"],
                            _artifact_bytes(path, "prunekit artifact (safetensors, float32)"))  # fmt: skip
    facts["widths"] = _widths_of_groups(record.get("groups") or [])
    facts["files"]["widths"] = str(path / "prune.json")
    if record.get("verify"):
        facts["latency"] = latency_rows(record["verify"])
        facts["notes"] += record["verify"].get("findings") or []
        facts["files"]["latency"] = str(path / "prune.json")
    if (path / ARTIFACT_WEIGHTS).is_file():
        facts["weights_file"] = str(path / ARTIFACT_WEIGHTS)
    facts["notes"].append(
        "accuracy not measured by `prunekit prune`: fine-tune it (`prunekit finetune`) or "
        "measure it (`prunekit evaluate`), or run the whole recipe (`prunekit run`)"
    )
    return facts


def _find_input(recorded: str | None, near: Path) -> Path | None:
    """The directory a record names (as it was given: relative to where the command ran)."""
    if not recorded:
        return None
    for candidate in (Path(recorded), near.parent / Path(recorded).name):
        if (candidate / "prune.json").is_file():
            return candidate
    return None


def read_finetune(path: Path, name: str | None) -> dict[str, Any]:
    """A ``prunekit finetune`` output (``finetune.json``; its input's ``prune.json`` when that
    directory is still there)."""
    record = _read_json(path / "finetune.json")
    pruned = _find_input(record.get("model"), path)
    facts = read_prune(pruned, name) if pruned is not None else _empty(path, "finetune", name)
    facts.update({"kind": "finetune", "path": str(path), "name": name or path.name})
    facts["notes"] = [n for n in facts["notes"] if not n.startswith("accuracy not measured")]
    facts["pruned_from"] = None if pruned is None else str(pruned)
    if "eval" in record:
        facts["accuracy"] = _accuracy(record["eval"], record.get("teacher_eval"))
        facts["retention"] = _retention(facts["accuracy"])
        facts["files"]["accuracy"] = str(path / "finetune.json")
        if record.get("teacher_eval") is None:
            facts["notes"].append("no dense accuracy: the fine-tune had no --teacher")
    sizes = record.get("sizes") or {}
    if pruned is None and sizes:
        model, teacher = sizes.get("model") or {}, sizes.get("teacher") or {}
        facts["macs"] = _pair(teacher.get("macs"), model.get("macs"))
        facts["params"] = _pair(teacher.get("params"), model.get("params"))
        facts["files"]["macs"] = facts["files"]["params"] = str(path / "finetune.json")
    if facts["model"]["name"] is None:
        facts["model"] = {"name": record.get("model")}
    facts["bytes"] = _bytes(facts["params"],
                            _artifact_bytes(path, "prunekit artifact (safetensors, float32)"))  # fmt: skip
    facts["weights_file"] = str(path / ARTIFACT_WEIGHTS)
    return facts


def read_transformer(path: Path, name: str | None) -> dict[str, Any]:
    """A ``prunekit prune --heads/--ffn/--layers`` output (a Hugging Face directory)."""
    facts = _empty(path, "transformer", name)
    record = _read_json(path / "prune.json")
    source = str(path / "prune.json")
    facts["model"] = {"name": record.get("model")}
    fidelity = record.get("fidelity") or {}
    split = record.get("split") or {}
    facts["accuracy"] = {
        "metric": "mean cosine to the dense embeddings", "dense": 1.0,
        "final": fidelity.get("mean_cosine"), "split": fidelity.get("split", "eval"),
        "samples": fidelity.get("sentences", split.get("eval")),
        "split_from": split.get("eval_from"), "spearman": fidelity.get("spearman"),
    }  # fmt: skip
    facts["retention"] = fidelity.get("mean_cosine")
    params = record.get("params") or {}
    facts["params"] = _pair(params.get("before"), params.get("after"))
    macs = record.get("macs") or {}
    facts["macs"] = _pair(macs.get("before"), macs.get("after"))
    if macs.get("tokens"):
        facts["notes"].append(f"MACs of one {macs['tokens']}-token sentence")
    for key in ("accuracy", "params", "macs", "widths"):
        facts["files"][key] = source
    for unit, before, after in (("heads", "heads_before", "heads"),
                                ("FFN neurons", "ffn_before", "ffn")):  # fmt: skip
        for i, (b, a) in enumerate(zip(record.get(before) or [], record.get(after) or [],
                                       strict=False)):  # fmt: skip
            facts["widths"].append({"name": f"layer {i}", "unit": unit, "before": b, "after": a})
    weights = path / ARTIFACT_WEIGHTS
    facts["bytes"] = _bytes(facts["params"], _artifact_bytes(
        path, "Hugging Face directory (safetensors)") if weights.is_file() else None)  # fmt: skip
    facts["notes"].append(
        "latency not measured by `prunekit prune --heads`: run `prunekit bench` on the dense "
        "and the pruned directory"
    )
    return facts


def read_mcu(path: Path, name: str | None) -> dict[str, Any]:
    """A ``prunekit mcu`` / ``prunekit demo`` output (``report.json`` and the C files)."""
    facts = _empty(path, "mcu", name)
    record = _read_json(path / "report.json")
    source = str(path / "report.json")
    dense, compressed = record.get("dense") or {}, record.get("compressed") or {}
    arch = [int(w) for w in str(dense.get("arch", "")).split("-") if w.isdigit()]
    facts["model"] = {"name": f"MLP {dense.get('arch')} on {record.get('dataset')}"}
    facts["accuracy"] = {"metric": "top1", "dense": dense.get("accuracy"),
                         "final": compressed.get("accuracy"), "split": "test",
                         "samples": record.get("test_samples"),
                         "split_from": f"the {record.get('dataset')} test split",
                         "data": record.get("dataset")}  # fmt: skip
    facts["retention"] = _retention(facts["accuracy"])
    layers = compressed.get("layers") or []
    # the C kernels multiply every stored entry (non-zeros of sparse formats, all entries of
    # dense ones): those are the MACs an inference executes
    dense_macs = sum(a * b for a, b in itertools.pairwise(arch)) or None
    final_macs = sum(int((lay.get("params") or {}).get("stored", 0)) for lay in layers) or None
    facts["macs"] = _pair(dense_macs, final_macs)
    facts["params"] = _pair(dense.get("params"), compressed.get("nonzeros"))
    facts["bytes"] = _bytes(facts["params"], {"format": f"C arrays ({compressed.get('values')})",
                                              "bytes": compressed.get("bytes"),
                                              "file": source})  # fmt: skip
    facts["mcu"] = {
        "budget": record.get("flash_budget"), "budget_text": record.get("flash_budget_text"),
        "flash": record.get("flash"), "c_check": record.get("c_check"),
        "layers": [{"shape": lay.get("shape"), "format": lay.get("format"),
                    "bytes": lay.get("total"), "weights": lay.get("weights")} for lay in layers],
        "compression_ratio": record.get("compression_ratio"),
    }  # fmt: skip
    for key in ("accuracy", "macs", "params", "mcu"):
        facts["files"][key] = source
    facts["widths"] = [{"name": f"layer {i}", "unit": "neurons", "before": b, "after": a}
                       for i, (b, a) in enumerate(zip(arch[1:-1], [s[0] for s in
                                                      compressed.get("shapes", [])][:-1],
                                                      strict=False))]  # fmt: skip
    weights = path / "weights.safetensors"
    if weights.is_file():
        facts["weights_file"] = str(weights)
    facts["notes"].append(
        "latency not measured: a microcontroller build is measured by its flash and RAM; "
        "time it on the board"
    )
    return facts


def _artifact_params(path: Path) -> int | None:
    """All parameters and buffers of an artifact, from its manifest's tensor shapes."""
    manifest = path / "prunekit.json"
    if not manifest.is_file():
        return None
    tensors = _read_json(manifest).get("tensors") or {}
    return sum(math.prod(t.get("shape") or []) for t in tensors.values()) or None


DIAGNOSIS_CAPTIONS = {
    "mask": "The weight mask of the diagnosed layer (kept dark, pruned white): which of its "
    "channels lost most weights.",
    "features": "The diagnosed layer's feature maps on the chosen image, dense against sparse.",
    "boundary": "The predicted segmentation, dense against sparse; the pixels whose class "
    "changed are outlined over the activations of the channels that lost most weights.",
}


def read_sparsify(path: Path, name: str | None) -> dict[str, Any]:
    """A ``prunekit sparsify`` output (``sparsify.json`` in the artifact, diagnosis pictures)."""
    facts = _empty(path, "sparsify", name)
    source = str(path / "sparsify.json")
    record = _read_json(path / "sparsify.json")
    facts["model"] = {"name": record.get("model")}
    metric = record.get("metric") or {}
    if metric.get("final") is not None:
        facts["accuracy"] = {"metric": metric.get("name"), "dense": metric.get("dense"),
                             "final": metric.get("final"), "split": metric.get("split"),
                             "samples": metric.get("samples"), "split_from": None,
                             "data": metric.get("data")}  # fmt: skip
        facts["retention"] = _retention(facts["accuracy"])
        facts["files"]["accuracy"] = source
    else:
        facts["notes"].append("accuracy not measured: `prunekit sparsify` was given no --data")
    total = _artifact_params(path)
    targeted, nonzero = record.get("targeted_weights"), record.get("nonzero_weights")
    if total is not None and targeted is not None and nonzero is not None:
        facts["params"] = _pair(total, total - targeted + nonzero)
        facts["files"]["params"] = source
        facts["notes"].append("parameters, final: the non-zero ones (every shape is kept)")
    sparse_file = path / "sparse.safetensors"
    facts["bytes"] = _bytes(facts["params"], _artifact_bytes(
        path, "prunekit artifact (dense safetensors, float32)"))  # fmt: skip
    storage = record.get("storage") or {}
    facts["sparsify"] = {
        key: record.get(key)
        for key in ("sparsity", "target", "nm", "schedule", "allocation", "floor",
                    "targeted_weights", "nonzero_weights", "ramp_completed", "seconds")
    }  # fmt: skip
    facts["sparsify"].update(
        storage={f: storage.get(f) for f in ("dense", "bitmask", "csr", "best")},
        sparse_file_bytes=sparse_file.stat().st_size if sparse_file.is_file() else None,
        skipped=record.get("skipped") or [],
    )
    facts["files"]["sparsify"] = source
    if (path / ARTIFACT_WEIGHTS).is_file():
        facts["weights_file"] = str(path / ARTIFACT_WEIGHTS)
    diagnosis = record.get("diagnosis") or {}
    pictures = []
    for relative in diagnosis.get("files") or []:
        picture = path / relative
        if picture.is_file() and picture.suffix == ".png":
            kind = Path(relative).stem.split("-")[0]
            pictures.append({"file": str(picture), "kind": kind,
                             "caption": DIAGNOSIS_CAPTIONS.get(kind, ""),
                             "image": diagnosis.get("image")})  # fmt: skip
    facts["diagnosis"] = pictures
    facts["notes"].append(
        "latency not measured by `prunekit sparsify`: every shape is kept, so dense kernels "
        "run as long as before; `prunekit advise MODEL` measures what sparse kernels buy here"
    )
    return facts


def read_advise(path: Path, name: str | None) -> dict[str, Any]:
    """A ``prunekit advise --out`` output (``advise.json``): not a pruned model but the
    measured table of what each kind of pruning buys on one machine."""
    record = _read_json(path / "advise.json")
    if record.get("format") != "prunekit-advise" or not isinstance(record.get("rows"), list):
        raise ReportInputError(f"{path / 'advise.json'} is not a `prunekit advise` record")
    return {
        "name": name or path.name or str(path), "kind": "advise", "path": str(path),
        "file": str(path / "advise.json"),
        **{key: record.get(key) for key in ("model", "device", "device_name", "backend",
                                             "threads", "rounds", "batch_sizes", "input",
                                             "recommendation", "rows")},
    }  # fmt: skip


READERS = (
    ("run.json", "prunekit run", read_run),
    ("finetune.json", "prunekit finetune", read_finetune),
    ("sparsify.json", "prunekit sparsify", read_sparsify),
    ("advise.json", "prunekit advise", read_advise),
    ("prune.json", "prunekit prune", None),  # structured or transformer: decided below
    ("report.json", "prunekit mcu / demo", read_mcu),
)


def read_input(path: str | Path, name: str | None = None) -> dict[str, Any]:
    """The facts of one output directory (or of the directory of a record file given)."""
    p = Path(path)
    if p.is_file() and p.name in {r[0] for r in READERS}:
        p = p.parent
    if not p.is_dir():
        raise ReportInputError(f"{p}: no such directory (give an output directory of prunekit)")
    for filename, _, reader in READERS:
        if not (p / filename).is_file():
            continue
        if filename == "prune.json":
            record = _read_json(p / filename)
            return (read_transformer if "fidelity" in record else read_prune)(p, name)
        if filename == "report.json" and "flash_budget" not in _read_json(p / filename):
            continue  # a report of another kind (this command's own, say)
        assert reader is not None
        return reader(p, name)
    looked = ", ".join(f"{f} ({c})" for f, c, _ in READERS)
    raise ReportInputError(f"{p} holds no prunekit output: looked for {looked}")

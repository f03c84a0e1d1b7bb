"""``pk.run_recipe``: the whole job from one file (``prunekit run RECIPE.yaml --out RUN_DIR``).

Each step writes ``RUN_DIR/<step>/`` (``train/``, ``prune/`` and ``finetune/`` are artifact
directories every command accepts as MODEL) with a ``step.json`` recording a digest of its
inputs: the recipe settings it reads and the files of the steps it builds on. A rerun skips a
step whose digest is unchanged and redoes it (and, through the digests, everything after it)
otherwise; an interrupted fine-tune resumes from ``RUN_DIR/finetune.checkpoint/``.
``RUN_DIR/run.json`` summarises the run.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from prunekit.api._config import ConfigError
from prunekit.api.evaluation import evaluate, model_sizes
from prunekit.errors import PrunekitError
from prunekit.recovery._checkpoint import INPUTS_FILE, is_checkpoint_dir, remove_checkpoint_dir

STEPS = ("train", "baseline", "sensitivity", "plan", "prune", "finetune", "verify", "evaluate")
TOP_KEYS = {
    "model", "input_shape", "model_kwargs", "trust_code", "data", "task", "target", "steps",
    "seed", "eval_fraction", "train", "sensitivity", "plan", "prune", "finetune", "verify",
    "evaluate", "baseline",
}  # fmt: skip
COMMAND = "prunekit run"
RUN_FILE = "run.json"
RUN_FORMAT = "prunekit-run"
STEP_FILE = "step.json"
VERIFY_KEYS = {"backend", "batch_sizes", "threads", "rounds", "device"}
PRUNE_KEYS = {"importance", "round_to", "ignore"}


class RecipeError(ConfigError):
    """A recipe that cannot run: an unknown key, an impossible step order, a missing value."""


@dataclass
class Recipe:
    model: str
    data: str
    steps: tuple[str, ...]
    task: str = "classification"
    target: str | None = None
    input_shape: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    trust_code: bool = False
    seed: int = 0
    eval_fraction: float | None = None
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def section(self, step: str) -> dict[str, Any]:
        return dict(self.sections.get(step) or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "data": self.data, "steps": list(self.steps), "task": self.task,
            "target": self.target, "input_shape": self.input_shape,
            "model_kwargs": self.model_kwargs, "trust_code": self.trust_code, "seed": self.seed,
            "eval_fraction": self.eval_fraction, **self.sections,
        }  # fmt: skip


def parse_recipe(data: Any, where: str = "recipe") -> Recipe:
    """Check a recipe mapping; every mistake is one line naming the key and the fix."""
    import difflib

    from prunekit.api.planning import PlanConfig, SensitivityConfig
    from prunekit.api.prune import TargetPruning
    from prunekit.api.recover import RecoverConfig

    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping of settings (model:, data:, steps: ...)")
    unknown = sorted(set(map(str, data)) - TOP_KEYS)
    if unknown:
        hints = [
            k
            + (
                f" (did you mean {m[0]}?)"
                if (m := difflib.get_close_matches(k, TOP_KEYS, 1))
                else ""
            )
            for k in unknown
        ]
        raise RecipeError(
            f"{where}: unknown key {', '.join(hints)}; known: {', '.join(sorted(TOP_KEYS))}"
        )
    for key in ("model", "data"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise RecipeError(
                f"{where}: {key}: is required (a {'model spec' if key == 'model' else 'data spec'})"
            )
    steps = data.get("steps", ["baseline", "prune", "finetune", "verify", "evaluate"])
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise RecipeError(f"{where}: steps: must be a list such as [baseline, prune, finetune]")
    for s in steps:
        if s not in STEPS:
            raise RecipeError(f"{where}: unknown step {s!r}; steps are {', '.join(STEPS)}")
    if len(set(steps)) != len(steps):
        raise RecipeError(f"{where}: steps: a step is listed twice")
    for a, b in itertools.pairwise(steps):
        if STEPS.index(b) < STEPS.index(a):
            raise RecipeError(
                f"{where}: step {b} cannot come after {a}; the order is {' -> '.join(STEPS)}"
            )
    _requires(steps, where, data)
    sections = {}
    checks: dict[str, Any] = {"train": RecoverConfig, "finetune": RecoverConfig,
                              "sensitivity": SensitivityConfig, "plan": PlanConfig}  # fmt: skip
    for step in ("train", "baseline", "sensitivity", "plan", "prune", "finetune", "verify",
                 "evaluate"):  # fmt: skip
        section = data.get(step)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise RecipeError(f"{where}: {step}: expected a mapping of settings, got {section!r}")
        if step in checks:
            checks[step].from_dict(section, where=f"{where}: {step}")
        elif step == "verify":
            _known(section, VERIFY_KEYS, f"{where}: verify")
            _check_verify(section, f"{where}: verify")
        elif step == "prune":
            _known(section, PRUNE_KEYS, f"{where}: prune")
            try:
                TargetPruning.from_dict(section, where=f"{where}: prune")
            except ConfigError as exc:  # the config's own checks do not name the section
                said = str(exc)
                raise RecipeError(said if said.startswith(where) else f"{where}: prune: {said}"
                                  ) from None  # fmt: skip
        elif section:
            raise RecipeError(f"{where}: {step}: takes no settings, got {', '.join(section)}")
        sections[step] = section
    target = data.get("target")
    if target is not None:
        from prunekit.planning.planner import Target

        try:
            Target.parse(str(target))
        except Exception as exc:
            raise RecipeError(f"{where}: target: {exc}") from None
    if target is not None and str(target).replace(" ", "").startswith("latency_ms="):
        raise RecipeError(f"{where}: target: latency_ms needs a latency table measured on the "
                          "target, which a recipe does not take: plan with prunekit plan "
                          "--lut (prunekit profile makes one), or use macs=, params= or bytes=")  # fmt: skip
    _check_top(data, where)
    task = data.get("task", "classification")
    if task not in ("classification", "segmentation"):
        raise RecipeError(f"{where}: task: must be classification or segmentation, got {task!r}")
    shape = data.get("input_shape")
    return Recipe(
        model=data["model"], data=data["data"], steps=tuple(steps), task=task,
        target=str(target) if target is not None else None,
        input_shape=None if shape is None else str(shape).replace(" ", ""),
        model_kwargs=dict(data.get("model_kwargs") or {}),  # a mapping: _check_top
        trust_code=data.get("trust_code", False), seed=data.get("seed", 0),
        eval_fraction=data.get("eval_fraction"), sections=sections,
    )  # fmt: skip


def _check_top(data: dict[str, Any], where: str) -> None:
    """The top-level values' types, before anything runs (``bool("false")`` is true, and
    ``int("abc")`` an internal error)."""
    from prunekit.inputs import parse_shape

    if not isinstance(data.get("trust_code", False), bool):
        raise RecipeError(f"{where}: trust_code must be true or false, got {data['trust_code']!r}")
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RecipeError(f"{where}: seed must be an integer, got {seed!r}")
    if not isinstance(data.get("model_kwargs") or {}, dict):
        raise RecipeError(f"{where}: model_kwargs: expected a mapping of keyword arguments, "
                          f"got {data['model_kwargs']!r}")  # fmt: skip
    fraction = data.get("eval_fraction")
    if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, (int, float))
                                 or not 0 < fraction < 1):  # fmt: skip
        raise RecipeError(f"{where}: eval_fraction must be a number in (0, 1), got {fraction!r}")
    shape = data.get("input_shape")
    if shape is not None:
        try:
            parse_shape(str(shape))  # a list's text, [1, 3, 8, 8], parses the same
        except PrunekitError as exc:
            raise RecipeError(f"{where}: input_shape: {exc}") from None


def _check_verify(section: dict[str, Any], where: str) -> None:
    """The verify step's settings, before the steps before it spend their time."""
    from prunekit.measure.backends import backend_class

    sizes = section.get("batch_sizes", [1, 32])
    if not isinstance(sizes, list) or not sizes or any(
            isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes) \
            or len(set(sizes)) != len(sizes):  # fmt: skip
        raise RecipeError(f"{where}: batch_sizes must be a list of distinct positive integers "
                          f"such as [1, 32], got {sizes!r}")  # fmt: skip
    for key in ("threads", "rounds"):
        value = section.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):  # fmt: skip
            raise RecipeError(f"{where}: {key} must be a positive integer, got {value!r}")
    device = section.get("device", "cpu")
    if not isinstance(device, str) or device.split(":")[0] not in ("cpu", "cuda"):
        raise RecipeError(f"{where}: device must be cpu or cuda (cuda:N), got {device!r}")
    try:
        backend_class(section.get("backend", "eager"))
    except PrunekitError as exc:
        raise RecipeError(f"{where}: {exc}") from None


def _known(section: dict[str, Any], keys: set[str], where: str) -> None:
    unknown = sorted(set(section) - keys)
    if unknown:
        raise RecipeError(
            f"{where}: unknown setting {', '.join(unknown)}; known: {', '.join(sorted(keys))}"
        )


def _requires(steps: list[str], where: str, data: dict[str, Any]) -> None:
    has = set(steps)
    if "plan" in has and "sensitivity" not in has:
        raise RecipeError(f"{where}: step plan needs sensitivity before it")
    if "plan" in has and not data.get("target"):
        raise RecipeError(
            f"{where}: step plan needs a target: (macs=, params=, bytes=, latency_ms=)"
        )
    if "prune" in has and "plan" not in has:
        target = str(data.get("target") or "").replace(" ", "")
        if not target.startswith("macs="):
            raise RecipeError(
                f"{where}: step prune without plan needs target: macs=F (other budgets need the "
                "sensitivity and plan steps)"
            )
    for step in ("finetune", "verify"):
        if step in has and "prune" not in has:
            raise RecipeError(f"{where}: step {step} needs prune before it")


def load_recipe(path: str | Path) -> Recipe:
    from prunekit._files import read_yaml

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    return parse_recipe(read_yaml(path, RecipeError, "the recipe "), str(path))


# --- running ---------------------------------------------------------------------------------


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _dir_digest(directory: Path) -> str:
    """What a step produced: its recorded file digests (prunekit's output record)."""
    from prunekit._outputs import read_record

    record = read_record(directory) or {}
    return _digest(record.get("files", record))


def _own_run_file(path: Path) -> bool:
    """A ``run.json`` this command wrote (older ones carry no format, only their keys)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and (data.get("format") == RUN_FORMAT or (
        "format" not in data and {"recipe", "dense", "final", "files"} <= set(data)))  # fmt: skip


def check_run_dir(out: str | Path) -> Path:
    """RUN_DIR: new, empty, or a previous ``prunekit run``'s (it holds ``run.json`` or step
    directories of its own); never the working directory, a parent, home or /."""
    from prunekit._outputs import _check_not_protected, check_parent_writable, read_record
    from prunekit.errors import OutputPathError

    path = Path(out)
    _check_not_protected(path, "--out")
    if path.exists():
        if not path.is_dir():
            raise OutputPathError(f"--out {out}: exists and is not a directory")
        foreign = []
        for entry in path.iterdir():
            if entry.name == RUN_FILE and _own_run_file(entry):
                continue
            if entry.name == "recipe.yaml" or entry.name.startswith("."):
                continue
            if (entry.name.endswith(".checkpoint") and entry.name[: -len(".checkpoint")] in STEPS
                    and is_checkpoint_dir(entry)):  # fmt: skip
                continue
            record = read_record(entry) if entry.is_dir() else None
            if entry.name not in STEPS or record is None or record.get("command") != COMMAND:
                foreign.append(entry.name)
        if foreign:
            raise OutputPathError(
                f"--out {out}: holds files prunekit run did not write ({', '.join(sorted(foreign)[:5])}); "
                "choose a new or empty directory"
            )
    else:
        check_parent_writable(path, "--out")
    return path


@dataclass
class _State:
    recipe: Recipe
    run_dir: Path
    say: Any
    dense: Any = None  # LoadedModel of the dense model
    data: Any = None
    example: Any = None
    record: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    progress: bool = False

    def training_progress(self, config: Any) -> Any:
        """An ``on_step`` for ``recover_`` drawing one progress bar per epoch, or None."""
        if not self.progress:
            return None
        from prunekit._progress import EpochProgress

        per_epoch = int(len(self.data.fit) * (1 - config.validation)) // config.batch_size
        return EpochProgress(per_epoch)


def run_recipe(recipe: Recipe | str | Path, out: str | Path, *, log: Any = None,
               on_step: Any = None, progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """Run every step of ``recipe`` into ``out``; returns (and writes) ``run.json``.
    ``progress``: show training progress on stderr (a bar on a terminal)."""
    import prunekit as pk

    say = log or (lambda _: None)
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    run_dir = check_run_dir(out)
    state = _State(recipe, run_dir, say, progress=progress)
    # everything that needs no model first: a bad data spec fails before any training
    from prunekit.data.specs import parse_spec

    kind, _ = parse_spec(recipe.data)
    if recipe.eval_fraction is not None and kind not in ("images", "segmentation", "sentences"):
        # it was recorded in run.json as if it had made the split
        raise RecipeError(f"eval_fraction: {recipe.data} comes with a held-out split of its own; "
                          "eval_fraction splits image folders and sentence files only")  # fmt: skip
    state.dense = _load(recipe, recipe.model)
    state.example = state.dense.input_spec.make(1)
    state.data = pk.api.data.as_data(recipe.data, example=state.example, seed=recipe.seed,
                                     eval_fraction=recipe.eval_fraction)  # fmt: skip
    if state.data.task != recipe.task:
        raise RecipeError(
            f"task: {recipe.task}, but data {recipe.data} holds {state.data.task} data"
        )
    run_dir.mkdir(parents=True, exist_ok=True)  # the model and data loaded: a bad one leaves none
    base_inputs = {"model": recipe.model, "input_shape": recipe.input_shape,
                   "model_kwargs": recipe.model_kwargs, "data": recipe.data, "seed": recipe.seed,
                   "eval_fraction": recipe.eval_fraction,
                   # a data folder that gained or lost images: every step measured on it again
                   "split": state.data.split.to_dict()}  # fmt: skip
    previous = _digest(base_inputs)
    for step in recipe.steps:
        inputs = {"previous": previous, "section": recipe.section(step),
                  "target": recipe.target if step in ("plan", "prune") else None}  # fmt: skip
        digest = _digest(inputs)
        directory = run_dir / step
        start = time.perf_counter()
        if _finished(directory, digest):
            say(f"{step}: skipped (inputs unchanged)")
            _restore(state, step, directory)
        else:
            say(f"{step}: running")
            _STEP_FUNCS[step](state, directory, digest)
        state.seconds[step] = time.perf_counter() - start
        previous = _digest([digest, _dir_digest(directory)])
        if on_step is not None:
            on_step(step)
    summary = _summary(state)
    from prunekit._outputs import write_file_atomic

    write_file_atomic(run_dir / RUN_FILE, lambda f: f.write(json.dumps(summary, indent=1)))
    return summary


def _load(recipe: Recipe, spec: str) -> Any:
    import prunekit as pk
    from prunekit.inputs import parse_shape

    shapes = [parse_shape(recipe.input_shape)] if recipe.input_shape else None
    return pk.load(spec, input_shapes=shapes, model_kwargs=recipe.model_kwargs or None,
                   trust_code=recipe.trust_code, seed=recipe.seed)  # fmt: skip


def _load_artifact(state: _State, directory: Path) -> Any:
    import prunekit as pk

    return pk.load(str(directory), trust_code=state.recipe.trust_code,
                   input_shapes=[tuple(state.example.tensors()[0].shape)])  # fmt: skip


def _finished(directory: Path, digest: str) -> bool:
    step_file = directory / STEP_FILE
    if not step_file.is_file():
        return False
    try:
        return json.loads(step_file.read_text()).get("inputs") == digest
    except (OSError, ValueError):
        return False


def _write_step(state: _State, directory: Path, digest: str, files: dict[str, Any],
                model: nn.Module | None = None, source: Any = None) -> None:  # fmt: skip
    """Write ``directory`` atomically: JSON ``files`` (with ``step.json``), as an artifact
    when ``model`` is given."""
    import prunekit as pk
    from prunekit._outputs import check_output_dir

    if model is None:
        savers = {name: _json_saver(data) for name, data in files.items()}
        _write_with(state, directory, digest, savers)
        return
    out = check_output_dir(directory, COMMAND, force=True, log=state.say)
    model.cpu()  # artifacts hold CPU tensors, whatever trained them
    pk.save(
        model, out, source=source, extra_files={**files, STEP_FILE: _step_record(state, digest)}
    )


def _step_record(state: _State, digest: str) -> dict[str, Any]:
    return {"inputs": digest, "recipe": state.recipe.to_dict()}


def _json_saver(data: Any) -> Any:
    return lambda path: path.write_text(json.dumps(data, indent=1))


def _read(directory: Path, name: str) -> Any:
    return json.loads((directory / name).read_text())


def _restore(state: _State, step: str, directory: Path) -> None:
    """A skipped step's results, read back for the summary and the steps after it."""
    if step == "train":
        trained = _load_artifact(state, directory)
        trained.recipe = state.dense.recipe
        state.dense = trained
    if step not in ("plan", "sensitivity"):  # files the summary does not read
        state.record[step] = _read(directory, f"{step}.json")


def _accuracy_key(state: _State) -> str:
    return "top1" if state.recipe.task == "classification" else "miou"


def _step_train(state: _State, directory: Path, digest: str) -> None:
    import prunekit as pk

    config = pk.RecoverConfig.from_dict(state.recipe.section("train"), where="train")
    record: dict[str, Any] = {}
    model = state.dense.model
    bars = state.training_progress(config)
    checkpoint, resume = _checkpoint(state, "train", digest)
    pk.recover_(model, state.data, config, example=state.example,
                checkpoint_dir=checkpoint, resume=resume,
                record=record, on_step=bars,
                log=state.say)  # fmt: skip
    if bars is not None:
        bars.close()
    state.record["train"] = record
    _write_step(state, directory, digest, {"train.json": record}, model, state.dense)
    remove_checkpoint_dir(checkpoint)


def _checkpoint(state: _State, step: str, digest: str) -> tuple[Path, bool]:
    """``RUN_DIR/<step>.checkpoint`` and whether to resume from it: only a checkpoint trained
    from this step's inputs (its digest, kept beside it) is resumed; one left by other inputs
    (the recipe changed how the model was pruned, say) is deleted and training starts over."""
    path = state.run_dir / f"{step}.checkpoint"
    marker = path / INPUTS_FILE
    try:
        same = json.loads(marker.read_text()).get("digest") == digest
    except (OSError, ValueError, AttributeError):
        same = False
    if path.exists() and not same:
        if (path / "last.pt").is_file():
            state.say(
                f"{step}: the checkpoint in {path} was trained from other inputs; starting over"
            )
        remove_checkpoint_dir(path)
    path.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"digest": digest}) + "\n")
    return path, (path / "last.pt").is_file()


def _step_baseline(state: _State, directory: Path, digest: str) -> None:

    model = state.dense.model
    record = {**model_sizes(model, state.example),
              "eval": evaluate(model, state.data, example=state.example)}  # fmt: skip
    state.record["baseline"] = record
    _write_step(state, directory, digest, {"baseline.json": record})


def _step_sensitivity(state: _State, directory: Path, digest: str) -> None:
    import prunekit as pk

    config = pk.SensitivityConfig.from_dict(state.recipe.section("sensitivity"))
    sens = pk.sensitivity(state.dense.model, state.example, data=state.data, config=config,
                          settings=state.dense.provenance(), model_name=state.dense.name,
                          log=state.say)  # fmt: skip
    _write_with(state, directory, digest, {"sensitivity.json": sens.save})


def _write_with(state: _State, directory: Path, digest: str, savers: dict[str, Any]) -> None:
    """Write ``directory`` atomically, each file by its own saver (``save(path)``)."""
    from prunekit._outputs import check_output_dir

    out = check_output_dir(directory, COMMAND, force=True, log=state.say)

    def writer(tmp: Path) -> None:
        for name, save in savers.items():
            save(tmp / name)
        (tmp / STEP_FILE).write_text(json.dumps(_step_record(state, digest), indent=1))

    out.write(writer)


def _step_plan(state: _State, directory: Path, digest: str) -> None:
    import prunekit as pk

    config = pk.PlanConfig.from_dict(state.recipe.section("plan"))
    plan = pk.plan(state.dense.model, state.example, state.recipe.target,
                   sensitivity=state.run_dir / "sensitivity" / "sensitivity.json", config=config,
                   log=state.say)  # fmt: skip
    plan.provenance = {**state.dense.provenance(), "sensitivity": "sensitivity/sensitivity.json"}
    _write_with(state, directory, digest, {"plan.json": plan.save})


def _step_prune(state: _State, directory: Path, digest: str) -> None:
    import prunekit as pk

    model = copy.deepcopy(state.dense.model)
    section = state.recipe.section("prune")
    if "plan" in state.recipe.steps:
        config: Any = pk.PlanPruning(plan=str(state.run_dir / "plan" / "plan.json"))
    else:
        macs = float(str(state.recipe.target).partition("=")[2])
        config = pk.TargetPruning.from_dict({**section, "macs": macs}, where="prune")
    record: dict[str, Any] = {"model": state.dense.name}
    pk.prune_(model, state.example, config, data=state.data, record=record, log=state.say)
    state.record["prune"] = record
    _write_step(state, directory, digest, {"prune.json": record}, model, state.dense)


def _step_finetune(state: _State, directory: Path, digest: str) -> None:
    import prunekit as pk

    pruned = _load_artifact(state, state.run_dir / "prune")
    config = pk.RecoverConfig.from_dict(state.recipe.section("finetune"), where="finetune")
    checkpoint, resume = _checkpoint(state, "finetune", digest)
    record: dict[str, Any] = {"teacher": state.dense.name}
    bars = state.training_progress(config)
    pk.recover_(pruned.model, state.data, config, teacher=state.dense.model,
                example=state.example, checkpoint_dir=checkpoint, resume=resume, record=record,
                on_step=bars, log=state.say)  # fmt: skip
    if bars is not None:
        bars.close()
    state.record["finetune"] = record
    _write_step(state, directory, digest, {"finetune.json": record}, pruned.model, pruned)
    remove_checkpoint_dir(checkpoint)


def _final_dir(state: _State) -> Path:
    return state.run_dir / ("finetune" if "finetune" in state.recipe.steps else "prune")


def _step_verify(state: _State, directory: Path, digest: str) -> None:
    from prunekit.planning.verify import verify_speedup

    section = state.recipe.section("verify")
    final = _load_artifact(state, _final_dir(state))
    report = verify_speedup(state.dense.model.eval(), final.model.eval(), state.dense.input_spec,
                            section.get("batch_sizes", [1, 32]),
                            backend=section.get("backend", "eager"),
                            device=section.get("device", "cpu"),
                            threads=section.get("threads"),
                            rounds=section.get("rounds", 5))  # fmt: skip
    record = report.to_dict()
    state.record["verify"] = record
    _write_step(state, directory, digest, {"verify.json": record})


def _step_evaluate(state: _State, directory: Path, digest: str) -> None:

    final_dir = _final_dir(state) if {"prune", "finetune"} & set(state.recipe.steps) else None
    final = _load_artifact(state, final_dir) if final_dir else state.dense
    dense_eval = evaluate(state.dense.model, state.data, example=state.example)
    final_eval = evaluate(final.model, state.data, example=state.example)
    key = _accuracy_key(state)
    record = {"dense": dense_eval, "final": final_eval, "model": str(final_dir or final.name),
              "retention": final_eval[key] / dense_eval[key] if dense_eval[key] else None,
              "final_sizes": model_sizes(final.model, state.example),
              "dense_sizes": model_sizes(state.dense.model, state.example)}  # fmt: skip
    state.record["evaluate"] = record
    _write_step(state, directory, digest, {"evaluate.json": record})


_STEP_FUNCS = {
    "train": _step_train,
    "baseline": _step_baseline,
    "sensitivity": _step_sensitivity,
    "plan": _step_plan,
    "prune": _step_prune,
    "finetune": _step_finetune,
    "verify": _step_verify,
    "evaluate": _step_evaluate,
}


def _summary(state: _State) -> dict[str, Any]:
    key = _accuracy_key(state)
    r = state.record
    evaluation = r.get("evaluate", {})
    baseline = r.get("baseline", {})
    dense_acc = (evaluation.get("dense") or baseline.get("eval") or {}).get(key)
    final_acc = (evaluation.get("final") or {}).get(key)
    dense_sizes = evaluation.get("dense_sizes") or {k: baseline.get(k) for k in ("macs", "params")}
    final_sizes = evaluation.get("final_sizes") or (r.get("prune") or {}).get("after") or {}
    verify = r.get("verify") or {}
    latency = [
        {"batch_size": row["batch_size"], "backend": verify["backend"],
         "device": verify.get("device", "cpu"), "threads": verify.get("threads"),
         "dense_ms": row["dense_ms"], "final_ms": row["pruned_ms"],
         "saved_ms": row["dense_ms"] - row["pruned_ms"], "speedup": row["measured"],
         "ideal": row["ideal"], "of_ideal": row["of_ideal"], "stable": row.get("stable")}
        for row in verify.get("rows", [])
    ]  # fmt: skip
    files = {}
    for step in state.recipe.steps:
        names = [p.name for p in sorted((state.run_dir / step).iterdir())
                 if p.name != STEP_FILE and not p.name.startswith(".")]  # fmt: skip
        files[step] = [f"{step}/{n}" for n in names]
    return {
        "format": RUN_FORMAT,
        "recipe": state.recipe.to_dict(),
        "dense": {"accuracy": dense_acc, "macs": dense_sizes.get("macs"),
                  "params": dense_sizes.get("params")},
        "final": {"accuracy": final_acc, "macs": final_sizes.get("macs"),
                  "params": final_sizes.get("params")},
        "metric": key,
        "retention": final_acc / dense_acc if final_acc is not None and dense_acc else None,
        "latency": latency,
        "data": {"spec": state.recipe.data, "split": state.data.split.to_dict(),
                 "eval_samples": state.data.split.eval},
        "seconds": state.seconds,
        "files": files,
    }  # fmt: skip

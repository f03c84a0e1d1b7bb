"""Loading an artifact is data only: nothing its manifest names runs without --trust-code.

Each hostile manifest below is refused with one line, and the marker file its payload would
create never appears (the payloads are real: they would create the marker if run)."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from prunekit.artifact import ArtifactError, load, save
from prunekit.errors import ModelSourceError, PrunekitError, UntrustedCodeError
from prunekit.inputs import TensorSpec

LINEAR_RECIPE = {"kind": "callable", "spec": "torch.nn:Linear",
                 "kwargs": {"in_features": 4, "out_features": 3}}  # fmt: skip


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a hostile manifest ran its payload"


@pytest.fixture
def evil_module(tmp_path: Path, marker: Path) -> Iterator[str]:
    """A module whose import alone creates the marker (an import side effect)."""
    name = f"prunekit_evil_{os.getpid()}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        from torch import nn
        Path({str(marker)!r}).write_text("imported")

        class Net(nn.Linear):
            def __init__(self, in_features=4, out_features=3):
                super().__init__(in_features, out_features)
    """))  # fmt: skip
    sys.path.insert(0, str(tmp_path))
    try:
        yield name
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    """A genuine artifact (torch.nn.Linear, allowlisted): loads without trust."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    return save(model, tmp_path / "artifact", recipe=LINEAR_RECIPE,
                input_spec=TensorSpec(((1, 4),)))  # fmt: skip


def _edit(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((directory / "prunekit.json").read_text())
    change(manifest)
    (directory / "prunekit.json").write_text(json.dumps(manifest))


def _refused_everywhere(cli, directory: Path, error: type[Exception], message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=message):
        load(directory)
    import prunekit

    with pytest.raises(PrunekitError):
        prunekit.load_model(str(directory))
    result = cli("analyze", str(directory))
    assert result.code == 1, result.out
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err and "internal error" not in lines[0]
    assert re.search(message, lines[0]), lines[0]


def test_a_genuine_allowlisted_artifact_loads_without_trust(artifact: Path) -> None:
    model, _ = load(artifact)
    assert isinstance(model, nn.Linear) and model.weight.shape == (3, 4)
    x = torch.randn(2, 4)
    torch.manual_seed(0)
    assert torch.equal(model(x), nn.Linear(4, 3)(x))


@pytest.mark.parametrize(
    "spec",
    ["prunekit.nn.perception:seg_net", "prunekit.nn.unet:unet", "prunekit.nn:unet",
     "prunekit.nn.unet:UNet"],
)  # fmt: skip
def test_prunekit_named_builders_load_without_trust(tmp_path: Path, spec: str) -> None:
    import prunekit as pk

    loaded = pk.load(spec, input_shapes=[(1, 3, 32, 32)], model_kwargs={"width": 8})
    saved = pk.save(loaded.model, tmp_path / "seg", source=loaded)
    model, _ = load(saved)
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(model.eval()(x), loaded.model.eval()(x))


def test_the_builder_allowlist_names_real_prunekit_builders() -> None:
    """Each allowlisted name is a function of that module that returns a model."""
    import importlib

    from prunekit.artifact._recipes import PRUNEKIT_BUILDERS

    assert set(PRUNEKIT_BUILDERS) == {"prunekit.nn.perception", "prunekit.nn.unet", "prunekit.nn"}
    assert PRUNEKIT_BUILDERS["prunekit.nn.unet"] == PRUNEKIT_BUILDERS["prunekit.nn"] == {"unet"}
    for module, names in PRUNEKIT_BUILDERS.items():
        for name in names:
            builder = getattr(importlib.import_module(module), name)
            assert callable(builder) and not isinstance(builder, type), (module, name)


@pytest.mark.parametrize(
    ("spec", "kwargs"),
    [
        ("os:system", {"command": "touch {marker}"}),
        ("subprocess:run", {"args": ["touch", "{marker}"]}),
        ("subprocess:check_call", {"args": "touch {marker}", "shell": True}),
        ("builtins:exec", {"source": "open({marker!r}, 'w').close()"}),
        ("builtins:eval", {"source": "open({marker!r}, 'w').close()"}),
        ("importlib:import_module", {"name": "{evil}"}),
        ("{evil}:Net", {}),
        ("torch.nn.init:normal_", {}),  # a function in an allowed package: not a module class
        ("torchvision.models._utils:handle_legacy_interface", {}),
        ("prunekit._outputs:write_record", {"directory": "{tmp}", "command": "x"}),
        # a prunekit function that is not one of its named builders
        (
            "prunekit.nn.perception:load_mobilenet_v2_features",
            {"features": None, "path": "{marker}"},
        ),
        ("prunekit.nn.unet:_stage", {"c_in": 3, "c_out": 4}),  # unet's module, not its builder
    ],
)
def test_recipes_that_would_run_code_are_refused(  # type: ignore[no-untyped-def]
    cli, artifact: Path, marker: Path, evil_module: str, tmp_path: Path, spec: str, kwargs: dict
) -> None:
    fill = {"marker": str(marker), "evil": evil_module, "tmp": str(tmp_path)}
    spec = spec.format(**fill)
    kwargs = json.loads(json.dumps(kwargs).replace("{marker!r}", repr(str(marker))).replace(
        "{marker}", str(marker)).replace("{evil}", evil_module).replace("{tmp}", str(tmp_path)))  # fmt: skip

    def hostile(m: dict[str, Any]) -> None:
        m["recipe"] = {"kind": "callable", "spec": spec, "kwargs": kwargs}

    _edit(artifact, hostile)
    _refused_everywhere(cli, artifact, UntrustedCodeError, "Nothing was run")
    assert evil_module not in sys.modules


@pytest.mark.parametrize("path", ["this:s", "{evil}:Net", "os:system", "builtins:object",
                                  "torch.nn:functional.relu", "torchvision.models:resnet18"])  # fmt: skip
def test_class_entries_are_limited_to_module_classes(  # type: ignore[no-untyped-def]
    cli, artifact: Path, marker: Path, evil_module: str, capsys, path: str
) -> None:
    path = path.format(evil=evil_module)
    _edit(artifact, lambda m: m["classes"].update({"": path}))
    with pytest.raises(ModelSourceError):
        load(artifact)
    result = cli("analyze", str(artifact))
    assert result.code == 1 and len(result.err.strip().splitlines()) == 1
    assert "The Zen of Python" not in capsys.readouterr().out + result.out
    assert evil_module not in sys.modules


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ({"kind": "torchvision", "name": "os:system"}, "does not exist"),
        ({"kind": "torchvision", "name": "resnet18", "kwargs": {"weights": "DEFAULT"}},
         "never downloads"),
        ({"kind": "huggingface", "class": "pipeline", "config": {"model_type": "bert"}},
         "no model class"),
        ({"kind": "huggingface", "class": "BertModel",
          "config": {"model_type": "evil", "auto_map": {"AutoModel": "evil.Net"}}},
         "does not know"),
        ({"kind": "pickle", "path": "model.pt"}, "unknown model recipe kind"),
        ("os:system", "must be a JSON object"),
    ],
)  # fmt: skip
def test_other_recipe_kinds_build_only_from_the_allowlist(  # type: ignore[no-untyped-def]
    cli, artifact: Path, recipe: Any, message: str
) -> None:
    _edit(artifact, lambda m: m.update(recipe=recipe))
    _refused_everywhere(cli, artifact, PrunekitError, message)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["files"]["model.safetensors"].pop("sha256"), "sha256"),
        (lambda m: m["files"]["model.safetensors"].update(sha256="0" * 63), "sha256"),
        (lambda m: m["files"].update({"../outside.safetensors": m["files"]["model.safetensors"]}),
         "no other names, no paths"),
        (lambda m: m["files"].update({"/etc/passwd": m["files"]["model.safetensors"]}),
         "no other names, no paths"),
        (lambda m: m["files"].pop("model.safetensors"), "does not list model.safetensors"),
        (lambda m: m["attributes"].update({"": {"__class__": "os"}}), "not an attribute"),
        (lambda m: m["attributes"].update({"": {"_forward_hooks": 1}}), "not an attribute"),
        (lambda m: m["attributes"].update({"": {"forward": "x"}}), "is a method"),
        (lambda m: m["attributes"].update({"": {"cfg": {"a": 1}}}), "only numbers"),
        (lambda m: m["tensors"]["weight"].update(shape=["3", 4]), "non-negative integers"),
        (lambda m: m.update(dropped_blocks="all"), "list of module names"),
    ],
)  # fmt: skip
def test_manifest_entries_are_checked_as_untrusted_data(  # type: ignore[no-untyped-def]
    cli, artifact: Path, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    _edit(artifact, change)
    _refused_everywhere(cli, artifact, ArtifactError, message)


def test_a_weights_file_linked_from_outside_is_refused(cli, artifact: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    outside = tmp_path / "outside.safetensors"
    (artifact / "model.safetensors").rename(outside)
    (artifact / "model.safetensors").symlink_to(outside)
    _refused_everywhere(cli, artifact, ArtifactError, "must lie in it")


# ------------------------------------------------------------------ file.py:callable recipes

TINY = "import torch\nfrom torch import nn\n\ndef make():\n    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))\n"  # fmt: skip


@pytest.fixture
def file_artifact(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:  # type: ignore[no-untyped-def]
    """``tiny.py:make`` pruned from a project directory, the artifact beside the file."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "tiny.py").write_text(TINY)
    monkeypatch.chdir(project)
    assert cli("prune", "tiny.py:make", "--ratio", "0.5", "--out", "pruned").code == 0
    return project / "pruned"


def _outputs(directory: Path) -> torch.Tensor:
    model, _ = load(directory, trust_code=True, say=lambda _: None)
    torch.manual_seed(1)
    return model(torch.randn(3, 8))


def test_a_file_recipe_needs_trust_and_says_what_it_runs(cli, file_artifact: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UntrustedCodeError, match=r"tiny\.py:make.*sha256"):
        load(file_artifact)
    heard: list[str] = []
    load(file_artifact, trust_code=True, say=heard.append)
    assert len(heard) == 1 and "running tiny.py:make" in heard[0] and "trusted" in heard[0]
    result = cli("analyze", str(file_artifact), "--trust-code")
    assert result.code == 0 and "running tiny.py:make" in result.err


def test_a_file_recipe_does_not_depend_on_the_working_directory(  # type: ignore[no-untyped-def]
    cli, file_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _outputs(file_artifact)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert torch.equal(_outputs(file_artifact), expected)
    # a different tiny.py here, same layer shapes: the artifact still finds its own file
    (elsewhere / "tiny.py").write_text(TINY + "# another model with the same shapes\n")
    assert torch.equal(_outputs(file_artifact), expected)
    assert cli("analyze", str(file_artifact), "--trust-code").code == 0


def test_a_different_or_missing_file_is_refused_even_when_trusted(  # type: ignore[no-untyped-def]
    cli, file_artifact: Path, tmp_path: Path
) -> None:
    source = file_artifact.parent / "tiny.py"
    source.write_text(TINY.replace("16", "16 ") + "\n")  # same shapes, different file
    with pytest.raises(ModelSourceError, match="is a different file; refusing"):
        load(file_artifact, trust_code=True)
    source.unlink()
    with pytest.raises(ModelSourceError, match=r"needs tiny\.py .*missing: looked for it at"):
        load(file_artifact, trust_code=True)
    result = cli("analyze", str(file_artifact), "--trust-code")
    assert result.code == 1 and str(source) in result.err


def test_artifact_and_file_moved_together_still_load(
    cli, file_artifact: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    expected = _outputs(file_artifact)
    moved = tmp_path / "moved"
    file_artifact.parent.rename(moved)
    assert torch.equal(_outputs(moved / "pruned"), expected)


def test_a_builder_that_loads_its_own_weights_loads_quietly(  # type: ignore[no-untyped-def]
    cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    from safetensors.torch import save_file

    save_file(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).state_dict(),
              str(tmp_path / "trained.safetensors"))  # fmt: skip
    (tmp_path / "trained.py").write_text(TINY + textwrap.dedent(f"""
        from safetensors.torch import load_file

        def trained():
            m = make()
            m.load_state_dict(load_file({str(tmp_path / "trained.safetensors")!r}))
            return m
    """))  # fmt: skip
    assert cli("prune", "trained.py:trained", "--ratio", "0.5", "--out", "p").code == 0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the load
        load(tmp_path / "p", trust_code=True, say=lambda _: None)
    result = cli("analyze", "p", "--trust-code")
    assert result.code == 0 and "UserWarning" not in result.err and "no-op" not in result.err


def test_save_refuses_a_recipe_that_does_not_rebuild_the_model(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ArtifactError, match="does not rebuild this model"):
        save(model, tmp_path / "a", recipe=LINEAR_RECIPE)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ArtifactError, match="needs recipe="):
        save(model, tmp_path / "a", recipe="torch.nn:Linear")  # type: ignore[arg-type]

"""``prunekit advise``: the variants are what they claim, and the table and the sentence follow
from the timings. Nothing here times anything: a fake ``measure`` returns preset latencies."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import prunekit.advise as advise_module
from prunekit.advise import advise, recommend, rows_of
from prunekit.advise.strategies import (
    CsrLinear,
    Variant,
    build_variants,
    channel_variant,
    mask_in_place,
    to_csr,
)
from prunekit.measure.compare import Comparison
from prunekit.measure.macs import count_macs
from prunekit.measure.params import count_params
from prunekit.models import load_model

TINY = textwrap.dedent(
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1)
            self.bn = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return torch.relu(x + self.conv2(torch.relu(self.bn(self.conv1(x)))))

    def tiny():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Block(8), Block(8), Block(8), Block(8),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4),
        )

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    """
)
SHAPE = "1,3,8,8"


@pytest.fixture
def tiny_file(tmp_path: Path) -> str:
    path = tmp_path / "advise_models.py"
    path.write_text(TINY)
    return str(path)


def _tiny(tiny_file: str) -> Any:
    return load_model(f"{tiny_file}:tiny", input_shapes=[(1, 3, 8, 8)])


def fake_measure(times: dict[str, float], default: float = 10.0) -> Callable[..., list[Comparison]]:
    """A ``measure`` that times nothing: every model takes ``times[key]`` ms (``default`` for
    the dense models and any key not named), alike in every round and at every batch size."""
    calls: list[dict[str, Any]] = []

    def measure(models: dict[str, nn.Module], spec: Any, batch_sizes: list[int],
                **kwargs: Any) -> list[Comparison]:  # fmt: skip
        calls.append({"models": list(models), **kwargs})
        return [
            Comparison(kwargs["backend"], b, 2, "dense",
                       {name: [times.get(name, default)] * kwargs["rounds"] for name in models})
            for b in batch_sizes
        ]  # fmt: skip

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


# --- the variants -------------------------------------------------------------------------------


def test_csr_linear_matches_the_masked_dense_layer() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(24, 10)
    masked = nn.Sequential(linear)
    mask_in_place(masked, 0.75)
    assert float((linear.weight == 0).float().mean()) == pytest.approx(0.75, abs=1 / 240)
    csr = CsrLinear(linear)
    assert csr.weight.layout == torch.sparse_csr and csr.nnz == 60
    for shape in ((1, 24), (7, 24), (2, 5, 24)):  # batch, and extra leading dimensions
        x = torch.randn(*shape)
        with torch.inference_mode():
            torch.testing.assert_close(csr(x), linear(x), atol=1e-5, rtol=1e-5)


def test_to_csr_replaces_every_plain_linear_and_keeps_the_outputs() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    mask_in_place(model, 0.9)
    csr, names = to_csr(model)
    assert names == ["0", "2"] and all(isinstance(csr[i], CsrLinear) for i in (0, 2))
    assert isinstance(model[0], nn.Linear)  # the masked model itself is left alone
    x = torch.randn(5, 16)
    with torch.inference_mode():
        torch.testing.assert_close(csr(x), model(x), atol=1e-5, rtol=1e-5)


def test_to_csr_leaves_multihead_attention_projections_alone() -> None:
    model = nn.Sequential(nn.MultiheadAttention(8, 2, batch_first=True))
    assert to_csr(model)[1] == []


def test_unstructured_variants_have_the_requested_share_of_zeros(tiny_file: str) -> None:
    loaded = _tiny(tiny_file)
    example = loaded.input_spec.make(1)
    variants, _ = build_variants(loaded.model, example)
    unstructured = [v for v in variants if v.strategy == "unstructured"]
    assert [(v.level, v.kernel) for v in unstructured] == [
        (0.5, "dense"), (0.5, "csr"), (0.75, "dense"), (0.75, "csr"), (0.9, "dense"), (0.9, "csr"),
    ]  # fmt: skip
    for v in unstructured:
        assert v.model is not None
        weights = [m.weight for m in v.model.modules()
                   if isinstance(m, (nn.Linear, nn.Conv2d))]  # fmt: skip
        for w in weights:  # every layer alike: round(level * numel) zeros
            assert int((w == 0).sum()) == round(v.level * w.numel())
        if v.kernel == "dense":
            total = sum(w.numel() for w in weights)
            zeros = sum(int((w == 0).sum()) for w in weights)
            assert zeros / total == pytest.approx(v.level, abs=0.01)
            assert v.macs_kept == pytest.approx(1 - v.level, abs=0.02)
    csr = [v for v in unstructured if v.kernel == "csr"]
    assert all("convolutions stay dense" in (v.note or "") for v in csr)
    # the dense model was not touched
    assert all(int((p == 0).sum()) == 0 for n, p in loaded.model.named_parameters()
               if n.endswith("weight") and p.dim() > 1)  # fmt: skip


def test_channels_row_is_exactly_what_prune_ratio_writes(
    cli, tiny_file: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "pruned"
    result = cli("prune", f"{tiny_file}:tiny", "--input-shape", SHAPE, "--ratio", "0.5",
                 "--out", str(out))  # fmt: skip
    assert result.code == 0, result.err
    written = load_model(str(out), trust_code=True).model
    loaded = _tiny(tiny_file)
    example = loaded.input_spec.make(1)
    variant = channel_variant(loaded.model, example, 0.5)
    assert variant.model is not None and variant.strategy == "channels"
    assert count_macs(variant.model, example).total == count_macs(written, example).total
    assert count_params(variant.model).params == count_params(written).params
    assert variant.macs_kept == pytest.approx(
        count_macs(written, example).total / count_macs(loaded.model, example).total
    )
    state = written.state_dict()
    assert {k: tuple(v.shape) for k, v in variant.model.state_dict().items()} == {
        k: tuple(v.shape) for k, v in state.items()
    }


def test_blocks_drop_the_later_residual_blocks_and_a_plain_model_gets_a_note(
    tiny_file: str,
) -> None:
    loaded = _tiny(tiny_file)
    variants, _ = build_variants(loaded.model, loaded.input_spec.make(1))
    blocks = next(v for v in variants if v.strategy == "blocks")
    assert blocks.details["dropped"] == ["5"] and blocks.details["candidates"] == 4
    assert blocks.level == 0.25  # 1 of 4
    assert blocks.macs_kept is not None and blocks.macs_kept < 1
    mlp = load_model(f"{tiny_file}:mlp", input_shapes=[(1, 16)])
    variants, _ = build_variants(mlp.model, mlp.input_spec.make(1))
    blocks = next(v for v in variants if v.strategy == "blocks")
    assert blocks.model is None and "no residual block" in (blocks.note or "")


def test_a_transformer_s_blocks_are_its_encoder_layers(tiny_bert_dir: Path) -> None:
    """BERT has no x + branch(x) module (the residual additions are inside each layer): the
    blocks row drops its last encoder layers, and the result computes what the dense model
    computes up to the last layer kept."""
    loaded = load_model(str(tiny_bert_dir))
    example = loaded.input_spec.make(1)
    variants, _ = build_variants(loaded.model, example)
    blocks = next(v for v in variants if v.strategy == "blocks")
    assert blocks.model is not None, blocks.note
    assert blocks.details == {"dropped": ["encoder.layer.1"], "candidates": 2}
    assert blocks.level == 0.5  # 1 of 2 dropped: the label says 50%, not the 25% asked
    assert "dropped the last 1 of 2 encoder layers" in (blocks.note or "")
    assert blocks.macs_kept is not None and 0.3 < blocks.macs_kept < 0.7
    with torch.no_grad():
        dense = loaded.model(*example.args, **example.kwargs, output_hidden_states=True)
        pruned = blocks.model(*example.args, **example.kwargs)
    torch.testing.assert_close(pruned.last_hidden_state, dense.hidden_states[1])


# --- the advice, on preset timings --------------------------------------------------------------


def test_advise_on_cpu_has_every_row_and_a_null_2_4_row_with_the_reason(tiny_file: str) -> None:
    loaded = _tiny(tiny_file)
    measure = fake_measure({"channels@0.5/dense": 5.0, "channels@0.25/dense": 8.0})
    record = advise(loaded.model, loaded.input_spec, batch_sizes=[1, 4], measure=measure,
                    model_name="tiny", rounds=3)  # fmt: skip
    assert {"model", "device", "backend", "threads", "rows", "recommendation"} <= set(record)
    assert record["device"] == "cpu" and record["backend"] == "eager"
    kinds = [(r["strategy"], r["level"], r["kernel"], r["batch_size"]) for r in record["rows"]]
    expected = [(s, lv, k, b) for s, lv, k in [
        ("unstructured", 0.5, "dense"), ("unstructured", 0.5, "csr"),
        ("unstructured", 0.75, "dense"), ("unstructured", 0.75, "csr"),
        ("unstructured", 0.9, "dense"), ("unstructured", 0.9, "csr"),
        ("2:4", 0.5, "semi-structured"), ("channels", 0.25, "dense"), ("channels", 0.5, "dense"),
        ("blocks", 0.25, "dense")] for b in (1, 4)]  # fmt: skip
    assert kinds == expected
    for row in record["rows"]:
        assert {"strategy", "level", "kernel", "batch_size", "dense_ms", "ms", "speedup",
                "macs_kept", "note"} <= set(row)  # fmt: skip
        assert row["dense_ms"] == 10.0
    nm = [r for r in record["rows"] if r["strategy"] == "2:4"]
    assert all(r["ms"] is None and r["speedup"] is None for r in nm)
    assert all("needs CUDA with compute capability >= 8.0" in r["note"] for r in nm)
    channels = {r["level"]: r for r in record["rows"] if r["strategy"] == "channels"}
    assert channels[0.5]["ms"] == 5.0 and channels[0.5]["speedup"] == 2.0
    assert channels[0.25]["speedup"] == 1.25
    assert record["recommendation"] == (
        "on this CPU (2 threads) only structured pruning pays: 2.00x (batch 1) at 50% "
        "channels; unstructured 90% (dense kernels) gives 1.00x (batch 1)"
    )
    # the 2:4 variant is never handed to the timer; the dense model is the reference
    timed = measure.calls[0]["models"]  # type: ignore[attr-defined]
    assert timed[0] == "dense" and not any(k.startswith("2:4") for k in timed)
    json.dumps(record, allow_nan=False)


def test_the_recommendation_follows_the_timer_to_unstructured(tiny_file: str) -> None:
    loaded = _tiny(tiny_file)
    measure = fake_measure({"unstructured@0.9/csr": 4.0, "channels@0.5/dense": 8.0})
    record = advise(loaded.model, loaded.input_spec, batch_sizes=[1], measure=measure, rounds=2)
    assert record["recommendation"] == (
        "on this CPU (2 threads) unstructured 90% (CSR sparse kernels) pays most: 2.50x; "
        "50% channels gives 1.25x"
    )
    best = max((r for r in record["rows"] if r["speedup"]), key=lambda r: r["speedup"])
    assert (best["strategy"], best["level"], best["kernel"]) == ("unstructured", 0.9, "csr")


def test_speedups_are_medians_of_per_round_ratios() -> None:
    variant = Variant("channels", 0.5, "dense", nn.Linear(1, 1))
    rounds = {"dense": [10.0, 20.0, 10.0], variant.key: [5.0, 5.0, 20.0]}
    row = rows_of([variant], [Comparison("eager", 1, 2, "dense", rounds)])[0]
    assert row["speedup"] == 2.0  # ratios 2, 4, 0.5
    assert row["speedup_range"] == [0.5, 4.0]
    assert row["dense_ms"] == 10.0 and row["ms"] == 5.0


def _row(strategy: str, level: float, kernel: str, speedup: float | None,
         batch: int = 1) -> dict[str, Any]:  # fmt: skip
    return {"strategy": strategy, "level": level, "kernel": kernel, "batch_size": batch,
            "speedup": speedup}  # fmt: skip


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([_row("unstructured", 0.9, "dense", 1.0), _row("channels", 0.5, "dense", 1.9)],
         "on this CPU only structured pruning pays: 1.90x at 50% channels; unstructured 90% "
         "(dense kernels) gives 1.00x"),
        ([_row("unstructured", 0.9, "dense", 1.01), _row("channels", 0.5, "dense", 1.02)],
         "on this CPU no kind of pruning pays in latency: the best is 1.02x at 50% channels; "
         "prune for size here, not for speed"),
        ([_row("2:4", 0.5, "semi-structured", 1.4), _row("channels", 0.25, "dense", 1.2),
          _row("unstructured", 0.9, "dense", 1.0)],
         "on this CPU 2:4 sparsity (sparse tensor cores) pays most: 1.40x; 25% channels gives "
         "1.20x"),
        ([_row("2:4", 0.5, "semi-structured", 1.4), _row("channels", 0.25, "dense", 1.0)],
         "on this CPU only sparse pruning pays: 1.40x at 2:4 sparsity (sparse tensor cores); "
         "25% channels gives 1.00x"),
        ([_row("2:4", 0.5, "semi-structured", None), _row("blocks", 0.25, "dense", 1.3)],
         "on this CPU only structured pruning pays: 1.30x at 25% of residual blocks dropped"),
        ([_row("2:4", 0.5, "semi-structured", None)],
         "on this CPU no kind of pruning could be measured, so there is nothing to recommend; "
         "see each row's note"),
    ],
)  # fmt: skip
def test_recommend_is_a_function_of_the_rows(rows: list[dict[str, Any]], expected: str) -> None:
    assert recommend(rows, "this CPU") == expected


# --- the command --------------------------------------------------------------------------------


@pytest.fixture
def fake_timer(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[Comparison]]:
    measure = fake_measure({"channels@0.5/dense": 4.0, "blocks@0.25/dense": 8.0})
    monkeypatch.setattr(advise_module, "interleaved", measure)
    return measure


def test_cli_json_and_out(cli, tiny_file: str, tmp_path: Path, fake_timer: Any) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "advice"
    result = cli("advise", f"{tiny_file}:tiny", "--input-shape", SHAPE, "--batch-sizes", "1,2",
                 "--rounds", "2", "--json", "--out", str(out))  # fmt: skip
    assert result.code == 0, result.err
    record = result.json()
    assert {"model", "device", "backend", "threads", "rows", "recommendation"} <= set(record)
    assert record["rounds"] == 2 and record["batch_sizes"] == [1, 2] and len(record["rows"]) == 20
    assert json.loads((out / "advise.json").read_text()) == record
    assert fake_timer.calls[0]["rounds"] == 2  # type: ignore[attr-defined]
    assert "2.50x (batch 1) at 50% channels" in record["recommendation"]
    # a second run needs --force, and --force replaces only advise's own output
    again = cli("advise", f"{tiny_file}:tiny", "--input-shape", SHAPE, "--out", str(out))
    assert again.code == 1 and "--force" in again.err
    forced = cli("advise", f"{tiny_file}:tiny", "--input-shape", SHAPE, "--out", str(out),
                 "--force")  # fmt: skip
    assert forced.code == 0, forced.err
    (out / "mine.txt").write_text("user file")
    refused = cli("advise", f"{tiny_file}:tiny", "--input-shape", SHAPE, "--out", str(out),
                  "--force")  # fmt: skip
    assert refused.code == 1 and (out / "mine.txt").exists()


def test_cli_table(cli, tiny_file: str, fake_timer: Any) -> None:  # type: ignore[no-untyped-def]
    result = cli("advise", f"{tiny_file}:tiny", "--input-shape", SHAPE, "--batch-sizes", "1")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[1].split()[:6] == ["strategy", "level", "kernel", "batch", "dense", "ms"]
    channels = next(line for line in lines if line.startswith("channels") and " 0.5 " in line)
    assert "4.000" in channels and "2.50x" in channels
    assert any("2:4 0.5 (semi-structured): needs CUDA" in line for line in lines)
    assert lines[-1] == (
        "recommendation: on this CPU (2 threads) only structured pruning pays: 2.50x at 50% "
        "channels; unstructured 90% (dense kernels) gives 1.00x"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "cuda"], "--device cuda: CUDA is not available on this machine"),
        (["--batch-sizes", "1,x"], "--batch-sizes"),
        (["--batch-sizes", "0"], "--batch-sizes"),
        (["--batch-sizes", "1,,2"], "cannot parse --batch-sizes '1,,2'"),
        (["--batch-sizes", "1,1"], "--batch-sizes '1,1' repeats a value"),
        (["--backend", "tensorrt-magic"], "unknown backend 'tensorrt-magic'"),
        (["--backend", "tensorrt"], "the tensorrt backend runs on NVIDIA GPUs"),
        (["--rounds", "0"], "--rounds must be a positive integer"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(cli, tiny_file: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  args: list[str], message: str) -> None:  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "advice"
    result = cli("advise", f"{tiny_file}:tiny", "--input-shape", SHAPE, "--out", str(out), *args)
    assert result.code == 1
    assert result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prunekit advise: error: "), result.err
    assert message in lines[0]
    assert not out.exists()


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0),
    reason="2:4 sparse tensor cores need CUDA with compute capability >= 8.0 (none here)",
)
def test_the_2_4_variant_on_cuda_is_exact_2_4_and_computes_the_masked_model() -> None:
    """On an Ampere-or-newer GPU: every converted Linear holds a semi-structured weight whose
    dense form keeps exactly 2 of every 4 inputs, the variant is timed against float16 dense,
    and real timings give a speedup row per batch size."""
    from prunekit.advise.strategies import semi_structured_variants
    from prunekit.inputs import TensorSpec

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 512)).eval()
    spec = TensorSpec(((128, 512),))
    example = spec.make(1)
    (variant,), dense16 = semi_structured_variants(model, example, count_macs(model, example),
                                                   torch.device("cuda"))  # fmt: skip
    assert variant.model is not None and dense16 is not None, variant.note
    assert variant.reference == "dense-fp16" and variant.details["layers"] == ["0", "2"]
    for name in ("0", "2"):
        weight = variant.model.model.get_submodule(name).weight.to_dense()
        groups = (weight != 0).reshape(weight.shape[0], -1, 4).sum(-1)
        assert bool((groups == 2).all())
    record = advise(model, spec, batch_sizes=[1, 8], device="cuda", rounds=2)
    rows = [r for r in record["rows"] if r["strategy"] == "2:4"]
    assert [r["batch_size"] for r in rows] == [1, 8]
    assert all(r["speedup"] is not None and r["speedup"] > 0 for r in rows)

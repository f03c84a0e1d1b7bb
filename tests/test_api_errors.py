"""The Python API refuses arguments of the wrong type or value as the CLI does: with a
``PrunekitError`` that names the argument, what it got and what to pass, before any work.

Every such error is also the matching builtin (``TypeError`` for a wrong type, ``ValueError``
for a wrong value), so that code catching those keeps working, and, where a module had its
own error class for the case (``InputSpecError``, ``SparsityError``, ``PruneConfigError``),
it is still one of those.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import InputSpecError, PrunekitError
from prunekit.evaluate import embed, evaluate_classification
from prunekit.graph import ChannelGraph, trace_channels
from prunekit.inputs import ExampleInputs, TensorSpec
from prunekit.measure.analysis import analyze
from prunekit.measure.latency import TimingPolicy, measure_latency
from prunekit.measure.macs import count_macs
from prunekit.measure.params import count_params
from prunekit.models import LoadedModel
from prunekit.planning.apply import apply_plan
from prunekit.planning.planner import Plan, Target, make_plan
from prunekit.planning.sensitivity import OutputDivergence, Sensitivity, analyze_sensitivity
from prunekit.pruning import StructuredPruning
from prunekit.pruning.config import PruneConfigError
from prunekit.pruning.transformer import TransformerPruning, prune_transformer
from prunekit.sparsity import (
    CubicSchedule,
    GradualPruner,
    SparsityError,
    magnitude_masks,
    nm_mask,
)

FAST = TimingPolicy(warmup_calls=1, warmup_s=0, min_repeats=2, min_time_s=0, max_time_s=0.2)
X4 = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
XC = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
SPEC = TensorSpec(((1, 4),))
SCHEDULE = CubicSchedule(0.0, 0.5, begin_step=0, end_step=4, frequency=1)
WEIGHTS = {"w": torch.arange(8.0).reshape(2, 4)}


def linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3)).eval()


def conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5),
    ).eval()  # fmt: skip


def loaded() -> LoadedModel:
    return LoadedModel(model=linear(), name="tiny", source="callable", input_spec=SPEC)


@functools.cache
def graph() -> ChannelGraph:
    return trace_channels(conv(), XC)


def metric() -> OutputDivergence:
    return OutputDivergence(conv(), [XC])


def sensitivity() -> Sensitivity:
    return Sensitivity("fingerprint", "conv", "output_divergence", [0.5], 1, 1)


def plan() -> Plan:
    return Plan("fingerprint", "conv", "macs=0.5", {}, {}, 0.0, {}, "output_divergence")


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(X4, torch.tensor([0, 2]))]


class Tokenizer:
    """Ids 1..n for n words (0 pads), like a Hugging Face tokenizer called with tensors."""

    def __call__(self, texts: list[str], **_: Any) -> dict[str, torch.Tensor]:
        length = max(len(t.split()) for t in texts)
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        for i, text in enumerate(texts):
            ids[i, : len(text.split())] = torch.arange(1, len(text.split()) + 1)
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(16, 4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids)  # [batch, tokens, dim]: a last hidden state


Call = Callable[[], Any]

# (call, TypeError or ValueError, fragments of the message: the argument, what it got, the fix)
CASES: list[Any] = [
    # --- measurement
    pytest.param(lambda: prunekit.analyze("resnet18", XC), TypeError,
                 ["model must be a torch.nn.Module", "str 'resnet18'"], id="analyze-model-str"),
    pytest.param(lambda: analyze(loaded(), X4), TypeError,
                 ["model must be a torch.nn.Module", "LoadedModel", "pass its .model"],
                 id="analyze-loaded-model"),
    pytest.param(lambda: analyze(linear(), "1,4"), TypeError,
                 ["inputs must be a tensor", "str '1,4'"], id="analyze-inputs-str"),
    pytest.param(lambda: analyze(linear(), SPEC), TypeError,
                 ["inputs must be", "spec.make(batch_size)"], id="analyze-inputs-spec"),
    pytest.param(lambda: analyze(X4, linear()), TypeError, ["model must be", "Tensor"],
                 id="analyze-swapped"),
    pytest.param(lambda: analyze(linear(), X4, name=3), TypeError, ["name must be a display"],
                 id="analyze-name"),
    pytest.param(lambda: count_macs("resnet18", X4), TypeError, ["model must be"],
                 id="count_macs-model"),
    pytest.param(lambda: count_macs(linear(), 3.0), TypeError, ["inputs must be", "float 3.0"],
                 id="count_macs-inputs"),
    pytest.param(lambda: count_params(loaded()), TypeError, ["model must be", ".model"],
                 id="count_params-loaded-model"),
    pytest.param(lambda: measure_latency("resnet18", SPEC, policy=FAST), TypeError,
                 ["model must be"], id="latency-model"),
    pytest.param(lambda: measure_latency(linear(), [X4], policy=FAST), TypeError,
                 ["inputs must be an InputSpec", "TensorSpec", "got a list"], id="latency-inputs-list"),
    pytest.param(lambda: measure_latency(linear(), ExampleInputs((X4,)), policy=FAST), TypeError,
                 ["inputs must be an InputSpec", "ExampleInputs"], id="latency-inputs-example"),
    pytest.param(lambda: measure_latency(linear(), SPEC, 8, policy=FAST), TypeError,
                 ["batch_sizes must be a list of positive integers", "int 8"],
                 id="latency-batch-sizes-int"),
    pytest.param(lambda: measure_latency(linear(), SPEC, [1, "2"], policy=FAST), TypeError,
                 ["batch_sizes[1] must be an integer", "str '2'"], id="latency-batch-size-str"),
    pytest.param(lambda: measure_latency(linear(), SPEC, [True], policy=FAST), TypeError,
                 ["batch_sizes[0] must be an integer", "bool True"], id="latency-batch-size-bool"),
    pytest.param(lambda: measure_latency(linear(), SPEC, [1, 0], policy=FAST), ValueError,
                 ["batch_sizes[1] must be a positive integer, got 0"], id="latency-batch-size-0"),
    pytest.param(lambda: measure_latency(linear(), SPEC, [], policy=FAST), ValueError,
                 ["at least one batch size"], id="latency-batch-sizes-empty"),
    pytest.param(lambda: measure_latency(linear(), SPEC, backend=None, policy=FAST), TypeError,
                 ["backend must be a backend name", "NoneType"], id="latency-backend"),
    pytest.param(lambda: measure_latency(linear(), SPEC, device="gpu", policy=FAST), ValueError,
                 ["device 'gpu' is not a device", "'cuda:0'"], id="latency-device-value"),
    pytest.param(lambda: measure_latency(linear(), SPEC, device=1.5, policy=FAST), TypeError,
                 ["device must be a device name", "float 1.5"], id="latency-device-type"),
    pytest.param(lambda: measure_latency(linear(), SPEC, dtype=torch.float16, policy=FAST),
                 TypeError, ["dtype must be the name of one", "'float16'"], id="latency-dtype"),
    pytest.param(lambda: measure_latency(linear(), SPEC, threads=0, policy=FAST), ValueError,
                 ["threads must be a positive integer, got 0"], id="latency-threads-0"),
    pytest.param(lambda: measure_latency(linear(), SPEC, threads="4", policy=FAST), TypeError,
                 ["threads must be an integer", "str '4'"], id="latency-threads-str"),
    pytest.param(lambda: measure_latency(linear(), SPEC, policy={"min_repeats": 1}), TypeError,
                 ["policy must be a prunekit.measure.latency.TimingPolicy", "dict"],
                 id="latency-policy"),
    # --- evaluation
    pytest.param(lambda: evaluate_classification("resnet18", batches()), TypeError,
                 ["model must be"], id="evaluate-model"),
    pytest.param(lambda: evaluate_classification(linear(), "data/val"), TypeError,
                 ["loader must be an iterable of (inputs, labels) batches", "str 'data/val'"],
                 id="evaluate-loader-str"),
    pytest.param(lambda: evaluate_classification(linear(), 5), TypeError,
                 ["loader must be an iterable", "int 5"], id="evaluate-loader-int"),
    pytest.param(lambda: evaluate_classification(linear(), batches(), max_batches=0), ValueError,
                 ["max_batches must be a positive integer, got 0"], id="evaluate-max-batches-0"),
    pytest.param(lambda: evaluate_classification(linear(), batches(), max_batches="2"),
                 TypeError, ["max_batches must be an integer", "str '2'"],
                 id="evaluate-max-batches-str"),
    pytest.param(lambda: evaluate_classification(linear(), batches(), topk=5), TypeError,
                 ["topk must be a sequence of positive integers", "int 5"], id="evaluate-topk-int"),
    pytest.param(lambda: evaluate_classification(linear(), batches(), topk=(0,)), ValueError,
                 ["topk values must be positive integers"], id="evaluate-topk-0"),
    pytest.param(lambda: evaluate_classification(linear(), batches(), device="gpu"), ValueError,
                 ["device 'gpu'"], id="evaluate-device"),
    # --- channel graph
    pytest.param(lambda: trace_channels("resnet18", XC), TypeError, ["model must be"],
                 id="trace-model"),
    pytest.param(lambda: trace_channels(loaded(), X4), TypeError, [".model"],
                 id="trace-loaded-model"),
    pytest.param(lambda: trace_channels(linear(), 4), TypeError, ["inputs must be", "int 4"],
                 id="trace-inputs"),
    # --- transformer pruning
    pytest.param(lambda: TransformerPruning(heads="0.5"), TypeError,
                 ["heads must be a fraction in [0, 1), got '0.5'"], id="transformer-heads-str"),
    pytest.param(lambda: TransformerPruning(ffn=1.0), ValueError,
                 ["ffn must be a fraction in [0, 1), got 1.0"], id="transformer-ffn-1"),
    pytest.param(lambda: TransformerPruning(layers=1.5), TypeError,
                 ["layers must be a non-negative integer"], id="transformer-layers-float"),
    pytest.param(lambda: TransformerPruning(layers=-1), ValueError,
                 ["layers must be a non-negative integer, got -1"], id="transformer-layers-neg"),
    pytest.param(lambda: TransformerPruning(criterion="taylor"), ValueError,
                 ["unknown criterion 'taylor'", "importance, magnitude, random"],
                 id="transformer-criterion"),
    pytest.param(lambda: TransformerPruning(head_allocation=None), TypeError,
                 ["head_allocation must be one of global, uniform"], id="transformer-allocation"),
    pytest.param(lambda: TransformerPruning(seed="0"), TypeError,
                 ["seed must be an integer", "str '0'"], id="transformer-seed"),
    pytest.param(lambda: prune_transformer("bert", X4, [], TransformerPruning()), TypeError,
                 ["model must be"], id="prune_transformer-model"),
    pytest.param(lambda: prune_transformer(linear(), "a cat", [], TransformerPruning()),
                 TypeError, ["example must be a tensor", "str 'a cat'"],
                 id="prune_transformer-example"),
    pytest.param(lambda: prune_transformer(linear(), X4, {"input_ids": X4}, TransformerPruning()),
                 TypeError, ["calibration must be an iterable of batches", "wrap a single batch"],
                 id="prune_transformer-calibration"),
    pytest.param(lambda: prune_transformer(linear(), X4, [], StructuredPruning(ratio=0.5)),
                 TypeError, ["config must be a prunekit.pruning.transformer.TransformerPruning",
                             "prunekit.pruning.prune"], id="prune_transformer-config"),
    pytest.param(lambda: prune_transformer(linear(), X4, [], TransformerPruning(), loss_fn="mse"),
                 TypeError, ["loss_fn must be a function"], id="prune_transformer-loss-fn"),
    # --- planning
    pytest.param(lambda: analyze_sensitivity("net", XC, graph(), metric()), TypeError,
                 ["model must be"], id="sensitivity-model"),
    pytest.param(lambda: analyze_sensitivity(conv(), "x", graph(), metric()), TypeError,
                 ["example must be"], id="sensitivity-example"),
    pytest.param(lambda: analyze_sensitivity(conv(), XC, None, metric()), TypeError,
                 ["graph must be a prunekit.graph.ChannelGraph", "trace_channels"],
                 id="sensitivity-graph"),
    pytest.param(lambda: analyze_sensitivity(conv(), XC, graph(), "kl"), TypeError,
                 ["metric must be a function", "OutputDivergence"], id="sensitivity-metric"),
    pytest.param(lambda: analyze_sensitivity(conv(), XC, graph(), metric(), ratios=0.5),
                 TypeError, ["ratios must be a sequence of fractions", "float 0.5"],
                 id="sensitivity-ratios-float"),
    pytest.param(lambda: analyze_sensitivity(conv(), XC, graph(), metric(), ratios=["0.5"]),
                 TypeError, ["ratios must be", "at position 0"], id="sensitivity-ratios-str"),
    pytest.param(lambda: analyze_sensitivity(conv(), XC, graph(), metric(), round_to=0),
                 ValueError, ["round_to must be a positive integer, got 0"],
                 id="sensitivity-round-to"),
    pytest.param(lambda: analyze_sensitivity(conv(), XC, graph(), metric(), cache=3), TypeError,
                 ["cache must be a file path"], id="sensitivity-cache"),
    pytest.param(lambda: analyze_sensitivity(conv(), XC, graph(), metric(), scores=[1.0]),
                 TypeError, ["scores must be a dict of group id"], id="sensitivity-scores"),
    pytest.param(lambda: make_plan(loaded(), XC, graph(), sensitivity(), Target("macs", 0.5)),
                 TypeError, [".model"], id="plan-loaded-model"),
    pytest.param(lambda: make_plan(conv(), XC, [graph()], sensitivity(), Target("macs", 0.5)),
                 TypeError, ["graph must be a prunekit.graph.ChannelGraph", "list"],
                 id="plan-graph"),
    pytest.param(lambda: make_plan(conv(), XC, graph(), "sens.json", Target("macs", 0.5)),
                 TypeError, ["sensitivity must be a prunekit.planning.sensitivity.Sensitivity",
                             "Sensitivity.load(path)"], id="plan-sensitivity-path"),
    pytest.param(lambda: make_plan(conv(), XC, graph(), sensitivity(), "macs=0.5"), TypeError,
                 ["target must be a prunekit.planning.planner.Target",
                  "Target.parse('macs=0.5')"], id="plan-target-str"),
    pytest.param(lambda: make_plan(conv(), XC, graph(), sensitivity(), Target("macs", 0.5),
                                   lut="lut.json"), TypeError,
                 ["lut must be a prunekit.planning.lut.LatencyTable", "LatencyTable.load(path)"],
                 id="plan-lut"),
    pytest.param(lambda: make_plan(conv(), XC, graph(), sensitivity(), Target("macs", 0.5),
                                   protect="0"), TypeError,
                 ["protect must be a list of module names", "str '0'"], id="plan-protect"),
    pytest.param(lambda: make_plan(conv(), XC, graph(), sensitivity(), Target("macs", 0.5),
                                   round_to="8"), TypeError,
                 ["round_to must be an integer", "str '8'"], id="plan-round-to"),
    pytest.param(lambda: make_plan(conv(), XC, graph(), sensitivity(), Target("macs", 0.5),
                                   latency_weight=None), TypeError,
                 ["latency_weight must be a number"], id="plan-latency-weight"),
    pytest.param(lambda: apply_plan(conv(), XC, "plan.json"), TypeError,
                 ["plan must be a prunekit.planning.planner.Plan", "Plan.load(path)"],
                 id="apply-plan-path"),
    pytest.param(lambda: apply_plan("net", XC, plan()), TypeError, ["model must be"],
                 id="apply-model"),
    pytest.param(lambda: apply_plan(conv(), {1, 2}, plan()), TypeError,
                 ["example must be", "set"], id="apply-example"),
    pytest.param(lambda: apply_plan(conv(), XC, plan(), graph="graph"), TypeError,
                 ["graph must be a prunekit.graph.ChannelGraph or None"], id="apply-graph"),
    pytest.param(lambda: apply_plan(conv(), XC, plan(), batches=XC), TypeError,
                 ["batches must be a list of example inputs", "Tensor"], id="apply-batches"),
    # --- sparsity
    pytest.param(lambda: magnitude_masks(linear(), 0.5), TypeError,
                 ["weights must be a dict", "dict(model.named_parameters())"],
                 id="masks-weights-model"),
    pytest.param(lambda: magnitude_masks([WEIGHTS["w"]], 0.5), TypeError,
                 ["weights must be a dict", "list"], id="masks-weights-list"),
    pytest.param(lambda: magnitude_masks({"w": [1.0, 2.0]}, 0.5), TypeError,
                 ["weights['w'] must be a tensor", "list"], id="masks-weight-list"),
    pytest.param(lambda: magnitude_masks(WEIGHTS, "0.5"), TypeError,
                 ["sparsity must be a number in [0, 1), got '0.5'"], id="masks-sparsity-str"),
    pytest.param(lambda: magnitude_masks(WEIGHTS, 1.5), ValueError,
                 ["sparsity must be a number in [0, 1), got 1.5"], id="masks-sparsity-1.5"),
    pytest.param(lambda: magnitude_masks(WEIGHTS, 0.5, scope="model"), ValueError,
                 ["scope must be 'global' or 'layer', got 'model'"], id="masks-scope-value"),
    pytest.param(lambda: magnitude_masks(WEIGHTS, 0.5, scope=None), TypeError,
                 ["scope must be 'global' or 'layer', got None"], id="masks-scope-type"),
    pytest.param(lambda: magnitude_masks(WEIGHTS, 0.5, scores=[WEIGHTS["w"]]), TypeError,
                 ["scores must be a dict", "list"], id="masks-scores"),
    pytest.param(lambda: nm_mask([[1.0, 2.0]], 1, 2), TypeError,
                 ["weight must be a tensor", "list"], id="nm-weight"),
    pytest.param(lambda: nm_mask(WEIGHTS["w"], "2", 4), TypeError,
                 ["N:M sparsity needs integers with 0 < n <= m, got n='2'"], id="nm-n-str"),
    pytest.param(lambda: nm_mask(WEIGHTS["w"], 4, 2), ValueError,
                 ["0 < n <= m, got n=4, m=2"], id="nm-n-above-m"),
    pytest.param(lambda: nm_mask(WEIGHTS["w"], 2, 4, dim="1"), TypeError,
                 ["dim must be an integer", "str '1'"], id="nm-dim"),
    pytest.param(lambda: CubicSchedule("0", 0.5, 0, 10, 1), TypeError,
                 ["initial_sparsity must be a number in [0, 1), got '0'"], id="schedule-initial"),
    pytest.param(lambda: CubicSchedule(0.0, 1.5, 0, 10, 1), ValueError,
                 ["final_sparsity must be a number in [0, 1), got 1.5"], id="schedule-final"),
    pytest.param(lambda: CubicSchedule(0.0, 0.5, 0, 10.0, 1), TypeError,
                 ["end_step must be an integer >= 0, got 10.0"], id="schedule-end-float"),
    pytest.param(lambda: CubicSchedule(0.0, 0.5, 0, 10, 0), ValueError,
                 ["frequency must be an integer >= 1, got 0"], id="schedule-frequency"),
    pytest.param(lambda: CubicSchedule(0.6, 0.5, 0, 10, 1), ValueError,
                 ["initial_sparsity (0.6) must not exceed final_sparsity (0.5)"],
                 id="schedule-order"),
    pytest.param(lambda: GradualPruner("net", SCHEDULE), TypeError, ["model must be"],
                 id="pruner-model"),
    pytest.param(lambda: GradualPruner(linear(), {"final_sparsity": 0.5}), TypeError,
                 ["schedule must be a prunekit.sparsity.CubicSchedule", "dict"],
                 id="pruner-schedule"),
    pytest.param(lambda: GradualPruner(linear(), SCHEDULE, parameters=5), TypeError,
                 ["parameters must be a sequence of parameter names", "int 5"],
                 id="pruner-parameters-int"),
    pytest.param(lambda: GradualPruner(linear(), SCHEDULE, parameters="0.weight"), TypeError,
                 ["parameters must be a sequence of names, not the string '0.weight'"],
                 id="pruner-parameters-str"),
    pytest.param(lambda: GradualPruner(linear(), SCHEDULE, nm=[2, 4]), TypeError,
                 ["nm must be a pair (n, m) such as (2, 4), got [2, 4]"], id="pruner-nm"),
    pytest.param(lambda: GradualPruner(linear(), SCHEDULE, score="abs"), TypeError,
                 ["score must be a function", "str 'abs'"], id="pruner-score"),
    pytest.param(lambda: GradualPruner(linear(), SCHEDULE, scope="layer",
                                       final_sparsity_by_name=0.5), TypeError,
                 ["final_sparsity_by_name must be a dict", "float 0.5"], id="pruner-finals"),
    pytest.param(lambda: GradualPruner(linear(), SCHEDULE, scope="all"), ValueError,
                 ["scope must be 'global' or 'layer', got 'all'"], id="pruner-scope"),
    # --- sentence embeddings
    pytest.param(lambda: embed("all-MiniLM-L6-v2", Tokenizer(), ["a cat"]), TypeError,
                 ["model must be"], id="embed-model"),
    pytest.param(lambda: embed(Encoder(), "all-MiniLM-L6-v2", ["a cat"]), TypeError,
                 ["tokenizer must be a tokenizer", "str 'all-MiniLM-L6-v2'"],
                 id="embed-tokenizer"),
    pytest.param(lambda: embed(Encoder(), Tokenizer(), "a cat"), ValueError,
                 ["sentences must be a sequence of strings, not one string", "wrap it in a list"],
                 id="embed-one-string"),
    pytest.param(lambda: embed(Encoder(), Tokenizer(), ["a cat", 3]), TypeError,
                 ["sentences must be a sequence of strings, got int 3 at position 1"],
                 id="embed-sentence-int"),
    pytest.param(lambda: embed(Encoder(), Tokenizer(), (s for s in ["a"])), TypeError,
                 ["sentences must be a sequence of strings", "generator"],
                 id="embed-generator"),
    pytest.param(lambda: embed(Encoder(), Tokenizer(), []), ValueError,
                 ["no sentences to embed"], id="embed-empty"),
    pytest.param(lambda: embed(Encoder(), Tokenizer(), ["a cat"], batch_size=0), ValueError,
                 ["batch_size must be a positive integer, got 0"], id="embed-batch-size"),
    pytest.param(lambda: embed(Encoder(), Tokenizer(), ["a cat"], max_length="128"), TypeError,
                 ["max_length must be an integer", "str '128'"], id="embed-max-length"),
]  # fmt: skip

# the error class a module raised for these before, which the new errors still are
ALSO: dict[str, type[PrunekitError]] = {
    "latency-inputs-list": InputSpecError,
    "latency-batch-size-0": InputSpecError,
    "latency-batch-sizes-empty": InputSpecError,
    "latency-threads-0": InputSpecError,
    "analyze-inputs-str": InputSpecError,
    "trace-inputs": InputSpecError,
    "transformer-heads-str": PruneConfigError,
    "transformer-ffn-1": PruneConfigError,
    "transformer-criterion": PruneConfigError,
    "masks-sparsity-str": SparsityError,
    "masks-scope-value": SparsityError,
    "nm-n-above-m": SparsityError,
    "schedule-final": SparsityError,
    "pruner-parameters-str": SparsityError,
}


@pytest.mark.parametrize(("call", "builtin", "fragments"), CASES)
def test_wrong_argument_raises_a_prunekit_error_naming_it(
    call: Call, builtin: type[Exception], fragments: list[str], request: pytest.FixtureRequest
) -> None:
    with pytest.raises(PrunekitError) as info:
        call()
    error = info.value
    assert isinstance(error, builtin), f"{type(error).__name__} is not a {builtin.__name__}"
    message = str(error)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    case = request.node.callspec.id
    if case in ALSO:
        assert isinstance(error, ALSO[case])


def test_arguments_are_checked_before_the_model_runs() -> None:
    # a model that fails on any call: the checks must refuse the arguments before using it
    class Untouchable(nn.Linear):
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the model ran although an argument was wrong")

    model = Untouchable(4, 3)
    for call in (
        lambda: analyze(model, X4, name=3),
        lambda: measure_latency(model, SPEC, [1, 0], policy=FAST),
        lambda: evaluate_classification(model, batches(), topk=(0,)),
        lambda: prune_transformer(model, X4, [], TransformerPruning(), loss_fn="mse"),
    ):
        with pytest.raises(PrunekitError):
            call()


# --- positive controls: valid calls, including numpy numbers, still work


def test_valid_measurements_still_work() -> None:
    model = linear()
    result = analyze(model, X4, name="tiny")
    assert (result.params, result.macs) == (15, 2 * 12)
    assert count_macs(model, ExampleInputs((X4,))).total == 24
    assert count_params(model).params == 15
    report = measure_latency(model, SPEC, (1, np.int64(2)), threads=1, policy=FAST)
    assert [r.summary.batch_size for r in report.results] == [1, 2]
    metrics = evaluate_classification(model, batches(), topk=[1, np.int64(2)], max_batches=1)
    assert metrics.n == 2


def test_valid_planning_still_works() -> None:
    model = conv()
    traced = trace_channels(model, XC)
    sens = analyze_sensitivity(
        model, XC, traced, OutputDivergence(model, [XC]), ratios=np.array([0.5]), blocks=False
    )
    plan = make_plan(model, XC, traced, sens, Target("macs", 0.8), protect=())
    apply_plan(model, XC, plan, graph=traced)
    assert count_macs(model, XC).total <= 0.8 * count_macs(conv(), XC).total


def test_valid_sparsity_and_embeddings_still_work() -> None:
    masks = magnitude_masks(dict(linear().named_parameters()), 0.5, scope="layer")
    assert set(masks) == {"0.weight", "0.bias"}
    assert nm_mask(WEIGHTS["w"], 2, 4, dim=np.int64(1)).sum() == 4
    pruner = GradualPruner(linear(), SCHEDULE, parameters=["0.weight"], nm=(2, 4))
    for _ in range(5):
        pruner.step()
    assert pruner.current_sparsity() >= 0.5
    assert TransformerPruning(heads=np.float64(0.25), layers=1).heads == 0.25
    vectors = embed(Encoder(), Tokenizer(), np.array(["a cat", "a black dog"]), batch_size=1)
    assert vectors.shape == (2, 4)

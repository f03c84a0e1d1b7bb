"""int8 post-training quantisation: golden fixed-point values, integer vs float simulation,
pruned zeros, and accuracy of the integer-only model on real data (sklearn digits)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from prunekit.errors import DeploymentError
from prunekit.mcu.qmodel import QuantizedMLP, integer_forward, integer_predict, linear_forward
from prunekit.mcu.quantize import (
    activation_qparams,
    calibration_ranges,
    dequantized_float_model,
    fake_quant_forward,
    fake_quant_linear,
    layer_input_qparams,
    mlp_layers,
    quantize_mlp,
    quantize_multiplier,
    quantize_weights,
)

# --- quantize_multiplier ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("real", "q", "shift"),
    [
        (0.5, 2**30, 0),  # frexp(0.5) = (0.5, 0)
        (0.25, 2**30, -1),
        (0.75, 3 * 2**29, 0),
        (1.0, 2**30, 1),
        (3.0, 3 * 2**29, 2),
        (0.1, 1717986918, -3),  # 0.8 * 2**31 = 1717986918.4 -> rounds down
        (1 - 2.0**-40, 2**30, 1),  # the mantissa rounds up to 2**31: halved, shift + 1
        (0.0, 0, 0),
        (2.0**-40, 0, 0),  # would need a right shift of 39 bits: flushed, as in TFLite
        (2.0**31, 2**31 - 1, 30),  # saturates, as in TFLite
    ],
)
def test_quantize_multiplier_golden(real: float, q: int, shift: int) -> None:
    got_q, got_shift = quantize_multiplier(np.array([real]))
    assert got_q.dtype == np.int32 and got_shift.dtype == np.int32
    assert (int(got_q[0]), int(got_shift[0])) == (q, shift)


def test_quantize_multiplier_reconstruction() -> None:
    rng = np.random.default_rng(0)
    real = 10.0 ** rng.uniform(-9, 4, size=20_000)
    q, shift = quantize_multiplier(real)
    assert np.all((q >= 2**30) & (q.astype(np.int64) < 2**31))
    back = q.astype(np.float64) * np.exp2(shift.astype(np.float64) - 31)
    assert np.max(np.abs(back - real) / real) < 2.0**-30


def test_quantize_multiplier_rejects_bad_values() -> None:
    with pytest.raises(DeploymentError, match=">= 0"):
        quantize_multiplier(np.array([0.5, -0.1]))
    with pytest.raises(DeploymentError, match="finite"):
        quantize_multiplier(np.array([np.nan]))
    with pytest.raises(DeploymentError, match="finite"):
        quantize_multiplier(np.array([np.inf]))


# --- activation and weight quantisation ---------------------------------------------------


@pytest.mark.parametrize(
    ("lo", "hi", "scale", "zero_point"),
    [
        (-1.0, 1.0, 2 / 255, -1),  # -128 + 127.5 = -0.5 rounds away from zero
        (0.0, 6.0, 6 / 255, -128),  # post-ReLU
        (2.0, 4.0, 4 / 255, -128),  # extended down to 0
        (-3.0, -1.0, 3 / 255, 127),  # extended up to 0
        (0.0, 0.0, 1.0, -128),  # dead layer: zero width
    ],
)
def test_activation_qparams_golden(lo: float, hi: float, scale: float, zero_point: int) -> None:
    got_scale, got_zero_point = activation_qparams(lo, hi)
    assert got_scale == pytest.approx(scale, rel=1e-12)
    assert got_zero_point == zero_point
    # the int8 grid covers the range extended to 0, up to half a step of zero-point rounding
    assert (-128 - got_zero_point) * got_scale <= min(lo, 0.0) + got_scale / 2
    assert (127 - got_zero_point) * got_scale >= max(hi, 0.0) - got_scale / 2


def test_activation_qparams_rejects_bad_ranges() -> None:
    with pytest.raises(DeploymentError, match="minimum above its maximum"):
        activation_qparams(1.0, -1.0)
    with pytest.raises(DeploymentError, match="not finite"):
        activation_qparams(0.0, float("inf"))


def test_quantize_weights_pruned_zeros_and_zero_row() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 20))
    w[rng.random(w.shape) < 0.5] = 0.0
    w[2] = 0.0
    q, s = quantize_weights(w)
    assert q.dtype == np.int8 and s.dtype == np.float32
    assert np.all(q[w == 0] == 0)
    assert np.all(q[2] == 0) and s[2] == 1.0
    live = [o for o in range(6) if o != 2]
    # each live row's largest magnitude maps to +-127 and the error is at most half a step
    assert np.all(np.abs(q[live]).max(axis=1) == 127)
    err = np.abs(q[live] * s[live, None].astype(np.float64) - w[live])
    assert np.all(err <= 0.5 * s[live, None] * (1 + 1e-6))


def test_quantize_weights_override_round_trip() -> None:
    rng = np.random.default_rng(2)
    scales = rng.uniform(0.001, 0.1, size=8).astype(np.float32)
    k = rng.integers(-127, 128, size=(8, 16))
    k[:, :4] = 0
    w = (k * scales[:, None].astype(np.float64)).astype(np.float32)  # float32, as in a model
    q, s = quantize_weights(w.astype(np.float64), scales)
    np.testing.assert_array_equal(q, k)
    np.testing.assert_array_equal(s, scales)
    with pytest.raises(DeploymentError, match="finite and > 0"):
        quantize_weights(w, np.zeros(8))
    with pytest.raises(DeploymentError, match="do not match 8 output channels"):
        quantize_weights(w, np.ones(3))


def test_quantize_mlp_weight_scales_override() -> None:
    torch.manual_seed(3)
    linears = [nn.Linear(12, 8), nn.Linear(8, 4)]
    model = nn.Sequential(linears[0], nn.ReLU(), linears[1])
    scales = [np.full(8, 0.01, dtype=np.float32), np.full(4, 0.02, dtype=np.float32)]
    rng = np.random.default_rng(3)
    ks = [rng.integers(-100, 101, size=(8, 12)), rng.integers(-100, 101, size=(4, 8))]
    with torch.no_grad():
        for linear, k, s in zip(linears, ks, scales, strict=True):
            linear.weight.copy_(torch.from_numpy(k * s[:, None].astype(np.float64)))
    qmodel = quantize_mlp(model, torch.randn(50, 12), weight_scales=scales)
    for layer, k, s in zip(qmodel.layers, ks, scales, strict=True):
        np.testing.assert_array_equal(layer.weight, k)
        np.testing.assert_array_equal(layer.weight_scale, s)
    with pytest.raises(DeploymentError, match="weight_scales has 1 entries but the model has 2"):
        quantize_mlp(model, torch.randn(5, 12), weight_scales=scales[:1])
    with pytest.raises(DeploymentError, match="Linear layer 1: weight scales of shape"):
        quantize_mlp(model, torch.randn(5, 12), weight_scales=[scales[0], np.ones(3)])


# --- mlp_layers ---------------------------------------------------------------------------


class _Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * 2


class _SeqWithForward(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + 1


def test_mlp_layers_walks_nested_sequentials() -> None:
    a, b, c = nn.Linear(16, 8), nn.Linear(8, 8), nn.Linear(8, 3)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Sequential(a, nn.Dropout(0.2), nn.ReLU(), nn.Identity()),
        nn.Sequential(nn.Sequential(b), nn.ReLU(), nn.ReLU()),
        c,
    )
    got = mlp_layers(model)
    assert [(lin is want, relu) for (lin, relu), want in zip(got, [a, b, c], strict=True)] == [
        (True, True),
        (True, True),
        (True, False),
    ]
    assert mlp_layers(c) == [(c, False)]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 3)), nn.Flatten(), nn.Linear(4, 2)),
            "prunekit's C export supports Linear + ReLU MLPs; found Conv2d at 0.0",
        ),
        (
            nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)),
            "supports Linear + ReLU MLPs; found BatchNorm1d at 1",
        ),
        (
            nn.Sequential(nn.ReLU(), nn.Linear(4, 2)),
            "found ReLU at 0 that does not follow a Linear",
        ),
        (nn.Sequential(nn.Linear(4, 4), nn.GELU()), "found GELU at 1"),
        (_Custom(), "found _Custom at the model root"),
        (nn.Sequential(_Custom()), "found _Custom at 0"),
        (_SeqWithForward(nn.Linear(4, 4)), "found _SeqWithForward at the model root"),
        (nn.Sequential(nn.Flatten(0)), "Flatten(start_dim=0, end_dim=-1) at 0"),
        (nn.Sequential(nn.Dropout()), "the model has no Linear layer"),
        (
            nn.Sequential(nn.Linear(4, 5), nn.Sequential(nn.Linear(6, 2))),
            "Linear at 1.0 expects 6 inputs but the Linear at 0 before it produces 5",
        ),
    ],
)
def test_mlp_layers_rejects_unsupported(model: nn.Module, message: str) -> None:
    with pytest.raises(DeploymentError, match=re.escape(message)):
        mlp_layers(model)


# --- integer path vs float simulation on a pruned random MLP ------------------------------


def _pruned_mlp(seed: int) -> tuple[nn.Sequential, torch.Tensor]:
    torch.manual_seed(seed)
    linears = [nn.Linear(64, 48), nn.Linear(48, 32), nn.Linear(32, 10)]
    model = nn.Sequential(linears[0], nn.ReLU(), linears[1], nn.ReLU(), linears[2])
    with torch.no_grad():
        for linear in linears:
            linear.weight.mul_((torch.rand_like(linear.weight) > 0.4).float())
            linear.weight[1].zero_()  # a pruned neuron
            linear.bias.normal_(0, 0.1)
    return model, torch.randn(400, 64) * 1.5 + 0.3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_integer_layers_match_fake_quant_within_one_lsb(seed: int) -> None:
    model, x = _pruned_mlp(seed)
    qmodel = quantize_mlp(model, x)
    h = qmodel.quantize_input(x.numpy())
    total = equal = 0
    for layer, scale, zero_point in layer_input_qparams(qmodel):
        ours = linear_forward(layer, h).astype(np.int64)
        fake = fake_quant_linear(layer, h, scale, zero_point).astype(np.int64)
        assert np.max(np.abs(ours - fake)) <= 1
        total += ours.size
        equal += int(np.sum(ours == fake))
        h = linear_forward(layer, h)  # feed both paths the same int8 input at every layer
    assert equal / total >= 0.99
    # the chained simulations may drift apart a little, but not far
    drift = integer_forward(qmodel, qmodel.quantize_input(x.numpy())).astype(np.int64)
    drift -= fake_quant_forward(qmodel, qmodel.quantize_input(x.numpy()))
    assert np.max(np.abs(drift)) <= 2


def test_quantize_mlp_fields_and_pruned_zeros() -> None:
    model, x = _pruned_mlp(0)
    qmodel = quantize_mlp(model, x)
    ranges = calibration_ranges(model, x)
    assert ranges[0] == (float(x.min()), float(x.max()))
    assert qmodel.input_scale == pytest.approx((ranges[0][1] - ranges[0][0]) / 255)
    assert [layer.relu for layer in qmodel.layers] == [True, True, False]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    for linear, layer, (lo, hi) in zip(linears, qmodel.layers, ranges[1:], strict=True):
        w = linear.weight.detach().numpy()
        assert layer.weight.dtype == np.int8 and layer.bias.dtype == np.int32
        assert np.all(layer.weight[w == 0] == 0)
        assert np.all(layer.weight[1] == 0) and layer.weight_scale[1] == 1.0
        assert (layer.output_scale, layer.output_zero_point) == activation_qparams(lo, hi)
        assert np.all((layer.multiplier >= 2**30) | (layer.multiplier == 0))
    # after a fused ReLU the range starts at 0, so the zero point sits at the bottom
    assert qmodel.layers[0].output_zero_point == -128


def test_bias_golden_single_layer() -> None:
    """One hand-checkable layer: every quantity follows from the formulas in qmodel."""
    linear = nn.Linear(2, 2)
    with torch.no_grad():
        # powers of two keep everything exact: scale 2**-7, -0.50390625 = -64.5 steps
        linear.weight.copy_(torch.tensor([[0.9921875, -0.50390625], [0.0, 0.0]]))
        linear.bias.copy_(torch.tensor([0.5, -0.25]))
    x = torch.tensor([[0.0, 2.55], [1.0, 0.0]])  # input range [0, 2.55]: scale 0.01, zp -128
    qmodel = quantize_mlp(nn.Sequential(linear), x)
    assert qmodel.input_scale == pytest.approx(0.01)
    assert qmodel.input_zero_point == -128
    layer = qmodel.layers[0]
    np.testing.assert_array_equal(layer.weight, [[127, -65], [0, 0]])  # -64.5 rounds away
    np.testing.assert_array_equal(layer.weight_scale, [2.0**-7, 1.0])
    # row 0: round(0.5 / (0.01 * 2**-7)) + 128 * (127 - 65) = 6400 + 7936
    # row 1 (pruned, scale 1.0): round(-0.25 / 0.01) - 0 = -25
    np.testing.assert_array_equal(layer.bias, [6400 + 128 * 62, -25])
    out = integer_forward(qmodel, qmodel.quantize_input(x.numpy()))
    np.testing.assert_array_equal(out, fake_quant_forward(qmodel, qmodel.quantize_input(x.numpy())))


def test_flatten_no_bias_and_torch_prune_masks() -> None:
    """Image-shaped calibration flattens; a bias-less Linear gets only the zero-point fold;
    weights pruned with torch.nn.utils.prune (a mask applied by a hook) quantise to zero."""
    from torch.nn.utils import prune

    torch.manual_seed(4)
    first, second = nn.Linear(16, 6, bias=False), nn.Linear(6, 3)
    prune.l1_unstructured(first, "weight", amount=0.5)
    model = nn.Sequential(nn.Flatten(), first, nn.ReLU(), second)
    x = torch.rand(30, 1, 4, 4)
    qmodel = quantize_mlp(model, x)
    layer = qmodel.layers[0]
    mask = first.get_buffer("weight_mask").numpy() == 0
    assert mask.sum() == 48 and np.all(layer.weight[mask] == 0)
    z_in = qmodel.input_zero_point
    np.testing.assert_array_equal(layer.bias, -z_in * layer.weight.astype(np.int64).sum(axis=1))
    xq = qmodel.quantize_input(x.reshape(30, -1).numpy())
    with torch.no_grad():
        ref = model(x).numpy()
    last = qmodel.layers[-1]
    got = (
        integer_forward(qmodel, xq).astype(np.float64) - last.output_zero_point
    ) * last.output_scale
    assert np.max(np.abs(got - ref)) < 0.05 * np.max(np.abs(ref))


def test_fake_quant_linear_rejects_bad_input() -> None:
    model, x = _pruned_mlp(0)
    qmodel = quantize_mlp(model, x)
    layer = qmodel.layers[0]
    with pytest.raises(DeploymentError, match=r"shape \[n, 64\], got \(3, 5\)"):
        fake_quant_linear(layer, np.zeros((3, 5), dtype=np.int8), 0.1, 0)
    with pytest.raises(DeploymentError, match="int8 values"):
        fake_quant_linear(layer, np.full((1, 64), 300), 0.1, 0)


def test_quantize_mlp_rejects_bad_calibration() -> None:
    model, _ = _pruned_mlp(0)
    with pytest.raises(DeploymentError, match="32 features per sample but the first Linear"):
        quantize_mlp(model, torch.zeros(4, 32))
    with pytest.raises(DeploymentError, match="inf or NaN"):
        quantize_mlp(model, torch.full((4, 64), float("nan")))
    with pytest.raises(DeploymentError, match="with n >= 1"):
        quantize_mlp(model, torch.zeros(0, 64))


def test_dequantized_float_model_matches_fake_quant() -> None:
    model, x = _pruned_mlp(1)
    qmodel = quantize_mlp(model, x)
    deq = dequantized_float_model(qmodel, dtype=torch.float64)
    assert [type(m) for m in deq] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    # the first dequantised layer on the dequantised input, quantised, is fake_quant_linear
    xq = qmodel.quantize_input(x.numpy())
    layer, scale, zero_point = next(layer_input_qparams(qmodel))
    x_real = torch.from_numpy((xq.astype(np.float64) - zero_point) * scale)
    with torch.no_grad():
        y = deq[1](deq[0](x_real)).numpy()
    y_q = np.clip(np.round(y / layer.output_scale) + layer.output_zero_point, -128, 127)
    fake = fake_quant_linear(layer, xq, scale, zero_point)
    assert np.max(np.abs(y_q - fake)) <= 1 and np.mean(y_q == fake) > 0.999
    # weight quantisation alone barely changes the float outputs
    with torch.no_grad():
        ref = model(x).double()
        got = dequantized_float_model(qmodel)(x).double()
    assert float((got - ref).abs().max()) < 0.02 * float(ref.abs().max())


# --- end to end on real data --------------------------------------------------------------


def test_digits_integer_accuracy_close_to_float() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x_train, x_test, y_train, y_test = train_test_split(
        data.data / 16.0, data.target, test_size=0.3, random_state=0, stratify=data.target
    )
    xt = torch.tensor(x_train, dtype=torch.float32)
    yt = torch.tensor(y_train)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    # Matrices this small gain nothing from intra-op threads, and on a busy machine the
    # threads' synchronisation makes training ~15x slower; one thread trains in under a second.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(300):  # full batch, ~98% test accuracy
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xt), yt).backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    with torch.no_grad():
        float_pred = model(torch.tensor(x_test, dtype=torch.float32)).argmax(1).numpy()
    float_acc = float(np.mean(float_pred == y_test))
    assert float_acc > 0.93  # the test below is only meaningful for a model that learned

    qmodel: QuantizedMLP = quantize_mlp(model, xt)
    int_pred = integer_predict(qmodel, qmodel.quantize_input(x_test))
    int_acc = float(np.mean(int_pred == y_test))
    assert abs(int_acc - float_acc) <= 0.015
    assert np.mean(int_pred == float_pred) >= 0.97

"""MAC counts against hand-derived formulas (1 MAC = one multiply-add)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.measure.macs import count_macs


def conv_macs(cin: int, cout: int, k: int, hout: int, wout: int, groups: int = 1) -> int:
    return cout * hout * wout * (cin // groups) * k * k


@pytest.mark.parametrize("use_meta", [True, False])
@pytest.mark.parametrize(("groups", "cout"), [(1, 16), (4, 16), (16, 16), (16, 32)])
def test_conv_including_depthwise_and_grouped(groups: int, cout: int, use_meta: bool) -> None:
    conv = nn.Conv2d(16, cout, 3, stride=2, padding=1, groups=groups)
    macs = count_macs(conv, torch.randn(1, 16, 32, 32), use_meta=use_meta)
    assert macs.total == conv_macs(16, cout, 3, 16, 16, groups)


@pytest.mark.parametrize("use_meta", [True, False])
def test_linear_on_3d_input_counts_every_token(use_meta: bool) -> None:
    layer = nn.Linear(64, 96)
    macs = count_macs(layer, torch.randn(2, 10, 64), use_meta=use_meta)
    assert macs.total == 2 * 10 * 64 * 96


def mha_macs(batch: int, length: int, embed: int) -> int:
    projections = 4 * length * embed * embed  # q, k, v in-projections and the out-projection
    attention = 2 * length * length * embed  # q @ k^T and attn @ v over all heads
    return batch * (projections + attention)


@pytest.mark.parametrize("use_meta", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("grad", [True, False])
def test_multihead_attention_counts_both_attention_matmuls(
    use_meta: bool, need_weights: bool, grad: bool
) -> None:
    # need_weights=False goes through scaled_dot_product_attention (a fused CPU kernel);
    # eval + no_grad would take the fused "fast path" that hides the projections.
    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(2, 10, 64)

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = mha

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=need_weights)[0]

    with torch.set_grad_enabled(grad):
        macs = count_macs(Wrap(), x, use_meta=use_meta)
    assert macs.total == mha_macs(2, 10, 64)
    assert macs.by_module == {"mha": mha_macs(2, 10, 64)}


def test_transformer_encoder_layer_fast_path_is_counted() -> None:
    layer = nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, batch_first=True).eval()
    macs = count_macs(layer, torch.randn(3, 7, 32), use_meta=False)
    ffn = 2 * 7 * 32 * 64
    assert macs.total == mha_macs(3, 7, 32) + 3 * ffn


def test_functional_matmul_in_forward_is_attributed_to_top_level() -> None:
    class Bilinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(8, 8, bias=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.proj(x)
            return x @ y.transpose(-1, -2)  # [B, L, L]: L*L*8 MACs per sample

    macs = count_macs(Bilinear(), torch.randn(2, 5, 8))
    assert macs.by_module == {"proj": 2 * 5 * 8 * 8, "": 2 * 5 * 5 * 8}
    assert macs.total == 2 * 5 * 8 * 8 + 2 * 5 * 5 * 8


def test_containers_that_never_run_do_not_break_attribution() -> None:
    # ModuleList / ModuleDict have no forward: their children's MACs must still be exclusive.
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
            self.heads = nn.ModuleDict({"a": nn.Linear(4, 2)})

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return self.heads["a"](x)

    macs = count_macs(Net(), torch.randn(1, 4))
    assert macs.by_module == {"blocks.0": 16, "blocks.1": 16, "blocks.2": 16, "heads.a": 8}


def test_counting_leaves_the_model_untouched() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).train()
    before = copy.deepcopy(model.state_dict())
    fastpath = torch.backends.mha.get_fastpath_enabled()
    for use_meta in (True, False):
        count_macs(model, torch.randn(2, 3, 8, 8), use_meta=use_meta)
    assert model.training
    assert torch.backends.mha.get_fastpath_enabled() == fastpath
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN stats not updated


def test_data_dependent_model_falls_back_to_a_real_forward() -> None:
    class Nonzero(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            keep = x[x.sum(dim=1) > -1e9]  # shape depends on values: impossible on meta
            return self.fc(keep)

    macs = count_macs(Nonzero(), torch.randn(3, 4))
    assert not macs.on_meta
    assert macs.total == 3 * 4 * 4


def test_output_shapes_recorded() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.Flatten(), nn.Linear(8 * 7 * 7, 10))
    macs = count_macs(model, torch.randn(1, 3, 16, 16))
    assert macs.output_shapes == {"0": [1, 8, 7, 7], "1": [1, 392], "2": [1, 10], "": [1, 10]}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_huggingface_bert_layer_macs(attn: str) -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        attn_implementation=attn,
    )
    model = transformers.BertModel(config).eval()
    batch, length = 2, 9
    ids = torch.randint(0, 50, (batch, length))
    macs = count_macs(model, {"input_ids": ids})
    h, ffn = 32, 48
    per_layer = batch * (4 * length * h * h + 2 * length * length * h + 2 * length * h * ffn)
    pooler = batch * h * h
    assert macs.total == 2 * per_layer + pooler

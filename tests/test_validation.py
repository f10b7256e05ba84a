"""Smoke tests of validation/: every registered experiment runs with --quick and leaves a
complete result.json and readable PNG figures. The verdict is recorded, not asserted."""

from __future__ import annotations

import json
import math
import pathlib
import sys

import numpy as np
import pytest

# validation/ sits beside the package at the repository root and is not installed with it.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from validation import experiment_names, load  # noqa: E402
from validation.__main__ import main  # noqa: E402
from validation._report import VERDICTS, plain  # noqa: E402

REQUIRED_KEYS = {
    "experiment", "claim", "source", "rule", "verdict", "setting", "settings", "seed", "seeds",
    "measured", "figures", "versions", "machine", "date", "runtime_s",
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def numbers_in(value):
    """Every number nested anywhere in a JSON value."""
    if isinstance(value, dict):
        for v in value.values():
            yield from numbers_in(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers_in(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@pytest.mark.parametrize("name", experiment_names())
def test_quick_run_writes_a_complete_result(name, tmp_path, capsys):
    assert main([name, "--quick", "--out", str(tmp_path), "--seed", "3"]) == 0
    assert f"{name}: " in capsys.readouterr().out
    result = json.loads((tmp_path / "result.json").read_text())

    assert REQUIRED_KEYS <= result.keys(), REQUIRED_KEYS - result.keys()
    assert result["experiment"] == name
    assert result["setting"] == "quick"
    assert result["seed"] == 3
    assert result["verdict"] in VERDICTS
    assert result["claim"] == load(name).CLAIM and result["claim"]
    assert result["rule"] and result["source"]
    assert {"python", "numpy", "gcref"} <= result["versions"].keys()
    numbers = list(numbers_in(result["measured"]))
    assert numbers, "an experiment must measure something"
    assert all(math.isfinite(x) for x in numbers)

    assert result["figures"]
    for figure in result["figures"]:
        data = (tmp_path / figure).read_bytes()
        assert figure.endswith(".png") and data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_list_prints_one_line_per_claim(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(experiment_names())
    for line, name in zip(lines, experiment_names()):
        assert load(name).CLAIM in line


@pytest.mark.parametrize("argv", [[], ["--all", experiment_names()[0]], ["no_such_claim"]])
def test_command_line_rejects_ambiguous_or_unknown_requests(argv):
    with pytest.raises(SystemExit):
        main(argv)


@pytest.mark.parametrize("bad", [float("nan"), np.inf, [1.0, -np.inf], {"a": {"b": np.nan}}])
def test_results_refuse_non_finite_numbers(bad):
    with pytest.raises(ValueError, match="finite"):
        plain({"x": bad})


def test_results_convert_numpy_values_to_plain_json():
    out = plain({"a": np.float32(0.5), "b": np.arange(3), "c": np.bool_(True), "d": "text"})
    assert out == {"a": 0.5, "b": [0, 1, 2], "c": True, "d": "text"}
    assert type(out["b"][0]) is int and type(out["c"]) is bool

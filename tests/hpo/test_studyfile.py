"""``hpo.studyfile.dump_study``: a study mapping written as TOML reads back the same."""

from __future__ import annotations

import math
import tomllib

import pytest

from hpo.config import STUDIES_DIR
from hpo.studyfile import dump_study


@pytest.mark.parametrize("path", sorted(STUDIES_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_shipped_study_file_round_trips(path) -> None:  # noqa: ANN001
    raw = tomllib.loads(path.read_text())
    assert tomllib.loads(dump_study(raw)) == raw


def test_edge_values_round_trip_and_bad_ones_are_named() -> None:
    raw = {"name": 'quo"te\\ and ünï', "n": 3, "x": 1e-300, "big": 2.5e10, "flag": False,
           "mixed": [1, 2], "data": {"cost_bps": [5, 0.5], "deep": {"k": "v"}},
           "objectives": [{"metric": "a"}, {"metric": "b", "direction": "minimize"}],
           "odd key": 1, "inf": math.inf}
    assert tomllib.loads(dump_study(raw)) == raw
    with pytest.raises(TypeError, match=r"data.when: cannot write"):
        dump_study({"data": {"when": object()}})

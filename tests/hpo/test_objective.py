"""hpo.objective helpers that need no study: settings a trainer derives from the search space."""

from __future__ import annotations

from hpo.config import Param
from hpo.objective import space_maxima

SPACE = (
    Param(name="graph_k", kind="int", low=5, high=20),
    Param(name="lr", kind="float", low=1e-4, high=1e-2, log=True),
    Param(name="hidden_size", kind="categorical", choices=(32, 64, 128)),
)
FIELDS = {"graph_k", "graph_k_max", "lr", "hidden_size", "hidden_size_max"}


def test_upper_bounds_fill_the_max_fields_a_trainer_declares() -> None:
    sampled = {"graph_k": 7, "lr": 1e-3, "hidden_size": 64}
    assert space_maxima(SPACE, sampled, fields=FIELDS, explicit=set()) == {
        "graph_k_max": 20, "hidden_size_max": 128}
    # lr has no lr_max field: nothing is invented for it
    assert "lr_max" not in space_maxima(SPACE, sampled, fields=FIELDS | {"x"}, explicit=set())


def test_an_explicit_setting_wins_and_an_enqueued_value_past_the_bound_is_covered() -> None:
    sampled = {"graph_k": 7, "hidden_size": 64}
    assert space_maxima(SPACE, sampled, fields=FIELDS, explicit={"graph_k_max"}) == {
        "hidden_size_max": 128}
    enqueued = {"graph_k": 25, "hidden_size": 64}
    assert space_maxima(SPACE, enqueued, fields=FIELDS, explicit={"graph_k"})[
        "graph_k_max"] == 25

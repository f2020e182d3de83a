"""trainers.config: how configs check themselves, and every setting declared once."""

from __future__ import annotations

import dataclasses

import pytest

from trainers.atft_gat.model import ModelConfig
from trainers.config import CheckedConfig, Checks, field_types, from_mapping, is_int, is_real
from trainers.errors import UserError
from trainers.registry import get_workload, workload_names
from trainers.runtime import RuntimeConfig


@dataclasses.dataclass(frozen=True)
class Base(CheckedConfig):
    size: int = 1
    sizes: tuple[int, ...] = ()

    def _check(self, checks: Checks) -> None:
        checks.need(self.size >= 1, "size", "must be >= 1")


@dataclasses.dataclass(frozen=True)
class Child(Base):
    ratio: float = 0.5

    PHRASE = "{name}={value!r} is not allowed: {rule}"

    def _check(self, checks: Checks) -> None:
        checks.need(0 < self.ratio < 1, "ratio", "must be in (0, 1)")
        if self.size > 10 and self.ratio > 0.1:
            checks.add("size > 10 needs ratio <= 0.1")


def test_every_class_checks_its_own_fields_bases_first_in_its_own_words() -> None:
    with pytest.raises(UserError) as err:
        Child(size=0, ratio=2.0)
    assert str(err.value) == ("size=0: must be >= 1; "
                              "ratio=2.0 is not allowed: must be in (0, 1)")
    with pytest.raises(UserError, match="^size > 10 needs ratio <= 0.1$"):
        Child(size=11)
    assert Child(sizes=[1, 2]).sizes == (1, 2)  # TOML lists become the declared tuples


def test_number_predicates_refuse_bools_and_non_finite_values() -> None:
    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert is_real(3) and is_real(0.5) and not is_real(True)
    assert not is_real(float("nan")) and not is_real(float("inf"))


def test_one_loader_reports_types_and_ranges_of_inherited_settings() -> None:
    with pytest.raises(UserError) as err:
        from_mapping(Child, {"size": "big", "optimizer": 1}, where="t.toml [trainer]")
    assert "t.toml [trainer].size: expected an integer, got 'big'" in str(err.value)
    assert "unknown key 'optimizer'" in str(err.value)
    with pytest.raises(UserError, match=r"1 problem\(s\): runtime: lr=-1.0 \(allowed: a finite"):
        from_mapping(RuntimeConfig, {"lr": -1}, where="runtime")


@pytest.mark.parametrize("name", workload_names())
def test_workloads_declare_runtime_and_model_settings_once(name: str) -> None:
    """A workload's TrainConfig extends RuntimeConfig (atft_gat also ModelConfig): a field it
    redeclares changes only the default, never the type; runtime() is what the runner gets."""
    config_cls = get_workload(name).config_cls
    types = field_types(config_cls)
    own_meaning = set(config_cls.RUNTIME_OVERRIDES)  # denoise: its own optimizer names
    for base in (RuntimeConfig, ModelConfig):
        if issubclass(config_cls, base):
            for field, tp in field_types(base).items():
                if field not in own_meaning:
                    assert types[field] == tp, (name, field)
    assert issubclass(config_cls, RuntimeConfig)
    runtime = config_cls().runtime()
    assert type(runtime) is RuntimeConfig
    for field in dataclasses.fields(RuntimeConfig):
        expected = config_cls.RUNTIME_OVERRIDES.get(field.name,
                                                    getattr(config_cls(), field.name))
        assert getattr(runtime, field.name) == expected, (name, field.name)


def test_workload_defaults_of_runtime_settings() -> None:
    from trainers.atft_gat.config import TrainConfig as Atft
    from trainers.condor.config import TrainConfig as Condor
    from trainers.denoise.config import TrainConfig as Denoise
    from trainers.lm.config import TrainConfig as Lm

    assert (Condor.lr, Condor.weight_decay, Condor.warmup_steps, Condor.min_batch) == (
        3e-4, 0.01, 100, 8)
    assert (Lm.weight_decay, Lm.betas, Lm.warmup_steps) == (0.1, (0.9, 0.95), 50)
    assert (Atft.weight_decay, Atft.warmup_steps, Atft.min_batch) == (1e-4, 20, 16)
    runtime = Denoise().runtime()
    assert (runtime.optimizer, runtime.lr, runtime.scheduler, runtime.precision) == (
        "adamw", 0.01, "constant", "fp32")


@pytest.mark.parametrize(("name", "settings", "expected"), [
    ("atft_gat", {"compile": True}, "compile=True: not supported by this workload"),
    ("denoise", {"grad_checkpointing": True},
     "grad_checkpointing=True is not allowed: the two-layer denoiser has no blocks"),
    ("denoise", {"optimizer": "adamw"}, "optimizer='adamw' is not allowed: must be one of adam"),
])
def test_runtime_settings_a_workload_cannot_use_are_refused(name, settings, expected) -> None:
    with pytest.raises(UserError, match=expected.replace("(", r"\(")):
        get_workload(name).config_cls(**settings)

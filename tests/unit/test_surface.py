"""RaptrEngine's surface, checked without building an engine: the refused DeepSpeed calls and
the one-line errors, and no mutable state shared by every engine (on the class). A real engine's
surface: tests/integration/test_engine_surface.py."""
from __future__ import annotations

import pytest

from megaraptr.errors import EngineUsageError, MegaraptrError
from megaraptr.runtime import surface
from megaraptr.runtime.engine import RaptrEngine
from megaraptr.runtime.pipe.engine import RaptrPipelineEngine


@pytest.mark.parametrize("name", sorted(surface.BYPASS))
def test_bypassing_names_raise_one_line_naming_train_step(name):
    with pytest.raises(EngineUsageError) as info:
        surface.forwarded(None, "RaptrEngine", name)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"RaptrEngine.{name}: not forwarded")
    assert "train_step" in message
    assert isinstance(info.value, AttributeError) and isinstance(info.value, MegaraptrError)


def test_other_names_point_at_engine_ds_in_one_line():
    with pytest.raises(AttributeError, match=r"^'RaptrEngine' object has no attribute 'secret' "
                                             r"\(DeepSpeed's engine is engine.ds; forwarded "
                                             r"names: megaraptr.runtime.surface.FORWARDED\)$"):
        surface.forwarded(None, "RaptrEngine", "secret")
    assert not set(surface.BYPASS) & surface.FORWARDED
    assert {"module", "global_steps", "monitor", "optimizer", "lr_scheduler", "device",
            "gradient_accumulation_steps", "train_micro_batch_size_per_gpu"} <= surface.FORWARDED


def test_an_engine_not_yet_built_has_no_attributes_and_refuses_bypasses():
    engine = object.__new__(RaptrEngine)  # as copy/pickle see it before __init__ ran
    assert getattr(engine, "module", None) is None
    with pytest.raises(EngineUsageError, match="RaptrEngine.backward"):
        engine.backward  # noqa: B018


@pytest.mark.parametrize("cls", [RaptrEngine, RaptrPipelineEngine])
def test_no_mutable_state_on_the_engine_classes(cls):
    for klass in cls.__mro__[:-1]:
        for name, value in vars(klass).items():
            assert not isinstance(value, (dict, list, set, bytearray)), f"{klass.__name__}.{name}"
    assert "kernels" not in vars(RaptrEngine)

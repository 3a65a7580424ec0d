"""Tests of megaraptr.config: the "raptr" block of the DeepSpeed JSON.

Pure: no DeepSpeed, no process group. Every rejection must be a ConfigError whose message is
one line that starts with the key path of the offending setting.
"""
import json

import pytest

from megaraptr.core.config import RaptrConfig, StageSpec
from megaraptr.core.ds_config import load_ds_config, scheduler_warmup_note
from megaraptr.errors import ConfigError, MegaraptrError
from megaraptr.methods import parse_raptr_block, split_ds_config


def _reject(block) -> str:
    """Parse ``block``, expect a ConfigError, check it is one line, return its message."""
    with pytest.raises(ConfigError) as info:
        parse_raptr_block(block)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, repr(message)
    assert message.startswith(info.value.key + ": "), (info.value.key, message)
    return message


# ---------------------------------------------------------------- defaults and accepted forms


@pytest.mark.parametrize("block", [None, {}])
def test_absent_or_empty_block_is_disabled_with_paper_defaults(block):
    cfg = parse_raptr_block(block)
    assert cfg.enabled is False
    assert cfg.schedule is None
    assert cfg.full_model_warmup_steps == 0
    assert cfg.method == "raptr"
    assert cfg.fixed_layers is None and cfg.effective_fixed_layers == [0, -1]
    assert cfg.sampling == "bernoulli"
    assert cfg.scaling is None and cfg.effective_scaling == "none"
    assert cfg.skipped_layers == "freeze"
    assert cfg.seed is None
    assert cfg.consistency_check_interval == 100


def test_default_fixed_layers_are_not_shared_between_instances():
    a, b = RaptrConfig(), RaptrConfig()
    assert a.effective_fixed_layers == b.effective_fixed_layers == [0, -1]
    a.effective_fixed_layers.append(5)
    assert b.effective_fixed_layers == [0, -1] == a.effective_fixed_layers


def test_config_is_frozen():
    cfg = parse_raptr_block({"enabled": True, "schedule": "6-12"})
    with pytest.raises(Exception):
        cfg.enabled = False


def test_depth_string_parses_to_layer_stages():
    cfg = parse_raptr_block({"enabled": True, "schedule": "6-8-10-12"})
    assert cfg.enabled
    assert [s.layers for s in cfg.schedule] == [6.0, 8.0, 10.0, 12.0]
    assert all(isinstance(s, StageSpec) for s in cfg.schedule)
    assert all(s.keep_prob is None and s.steps is None and s.fraction is None
               for s in cfg.schedule)


def test_depth_string_allows_spaces_and_decimals():
    cfg = parse_raptr_block({"schedule": " 6 - 8.5 -12 "})
    assert [s.layers for s in cfg.schedule] == [6.0, 8.5, 12.0]


def test_single_stage_string():
    cfg = parse_raptr_block({"enabled": True, "schedule": "12"})
    assert [s.layers for s in cfg.schedule] == [12.0]


def test_list_of_stages_with_every_field():
    cfg = parse_raptr_block({
        "enabled": True,
        "schedule": [{"keep_prob": 0.5, "steps": 100},
                     {"layers": 10, "fraction": 0.25},
                     {"keep_prob": 1}],
        "full_model_warmup_steps": 30, "sampling": "exact", "fixed_layers": [0, 1, -1],
        "scaling": "inverse_keep_prob", "skipped_layers": "momentum", "seed": 7,
        "consistency_check_interval": 0,
    })
    first, second, third = cfg.schedule
    assert (first.keep_prob, first.layers, first.steps, first.fraction) == (0.5, None, 100, None)
    assert (second.keep_prob, second.layers, second.steps, second.fraction) == (
        None, 10.0, None, 0.25)
    assert (third.keep_prob, third.layers, third.steps, third.fraction) == (1.0, None, None, None)
    assert cfg.full_model_warmup_steps == 30
    assert cfg.sampling == "exact"
    assert cfg.fixed_layers == [0, 1, -1]
    assert cfg.scaling == "inverse_keep_prob"
    assert cfg.skipped_layers == "momentum"
    assert cfg.seed == 7
    assert cfg.consistency_check_interval == 0


def test_integers_are_accepted_where_floats_are_expected():
    # JSON has no float/int distinction for whole numbers: "keep_prob": 1 and "layers": 6.
    cfg = parse_raptr_block({"schedule": [{"keep_prob": 0}, {"layers": 6}, {"keep_prob": 1}]})
    assert [s.keep_prob for s in cfg.schedule] == [0.0, None, 1.0]
    assert cfg.schedule[1].layers == 6.0


def test_schedule_without_enabled_stays_disabled():
    cfg = parse_raptr_block({"schedule": "6-8-10-12"})
    assert cfg.enabled is False and len(cfg.schedule) == 4


# ---------------------------------------------------------------- rejections


def test_unknown_top_level_key():
    message = _reject({"enabled": True, "schedule": "6-12", "foo": 1})
    assert message.startswith("raptr.foo: unknown key; allowed: ")
    for key in RaptrConfig.model_fields:
        assert key in message


def test_unknown_stage_key():
    message = _reject({"schedule": [{"layers": 6, "bar": 2}, {"layers": 12}]})
    assert message.startswith("raptr.schedule[0].bar: unknown key")
    assert "keep_prob, layers, steps, fraction" in message


def test_unknown_key_in_a_later_stage_names_its_index():
    message = _reject({"schedule": [{"layers": 6}, {"layers": 8}, {"layers": 12, "stpes": 3}]})
    assert message.startswith("raptr.schedule[2].stpes: unknown key")


def test_several_problems_reported_as_one_line_with_a_count():
    message = _reject({"foo": 1, "bar": 2, "enabled": "yes"})
    assert "(and 2 more problems)" in message


@pytest.mark.parametrize("block, path", [
    ({"enabled": "true"}, "raptr.enabled"),          # string for bool
    ({"enabled": 1}, "raptr.enabled"),               # int for bool
    ({"seed": 1.0}, "raptr.seed"),                   # float for int
    ({"seed": True}, "raptr.seed"),                  # bool for int
    ({"seed": "3"}, "raptr.seed"),
    ({"full_model_warmup_steps": 10.5}, "raptr.full_model_warmup_steps"),
    ({"full_model_warmup_steps": False}, "raptr.full_model_warmup_steps"),
    ({"fixed_layers": 0}, "raptr.fixed_layers"),
    ({"fixed_layers": [0, "1"]}, "raptr.fixed_layers[1]"),
    ({"fixed_layers": [0, 1.0]}, "raptr.fixed_layers[1]"),
    ({"sampling": "exactly"}, "raptr.sampling"),
    ({"sampling": None}, "raptr.sampling"),
    ({"scaling": "1/p"}, "raptr.scaling"),
    ({"skipped_layers": "zero"}, "raptr.skipped_layers"),
    ({"consistency_check_interval": -1}, "raptr.consistency_check_interval"),
    ({"seed": -1}, "raptr.seed"),
    ({"full_model_warmup_steps": -1}, "raptr.full_model_warmup_steps"),
    ({"schedule": [{"keep_prob": True}]}, "raptr.schedule[0].keep_prob"),   # bool for float
    ({"schedule": [{"layers": False}]}, "raptr.schedule[0].layers"),
    ({"schedule": [{"keep_prob": "0.5"}]}, "raptr.schedule[0].keep_prob"),
    ({"schedule": [{"layers": 6, "steps": 2.0}]}, "raptr.schedule[0].steps"),
    ({"schedule": [{"layers": 6, "steps": 0}]}, "raptr.schedule[0].steps"),
    ({"schedule": [{"layers": 6, "fraction": 0}]}, "raptr.schedule[0].fraction"),
    ({"schedule": [{"layers": 6, "fraction": 1.5}]}, "raptr.schedule[0].fraction"),
    ({"schedule": [{"layers": -1}]}, "raptr.schedule[0].layers"),
    ({"schedule": [{"layers": 6}, 5]}, "raptr.schedule[1]"),
    ({"schedule": 12}, "raptr.schedule"),
])
def test_wrong_types_and_values_name_the_key(block, path):
    message = _reject(block)
    assert message.startswith(path + ": "), message


def test_wrong_type_message_shows_the_input():
    message = _reject({"enabled": "true"})
    assert message == 'raptr.enabled: Input should be a valid boolean (got "true")'


@pytest.mark.parametrize("value", [-0.1, 1.01, 2])
def test_keep_prob_out_of_range(value):
    block = {"schedule": [{"keep_prob": 0.5}, {"keep_prob": 1.0}, {"keep_prob": value}]}
    message = _reject(block)
    assert message.startswith("raptr.schedule[2].keep_prob: ")
    assert json.dumps(value) in message


@pytest.mark.parametrize("value", [0.0, 1.0])
def test_keep_prob_bounds_are_inclusive(value):
    cfg = parse_raptr_block({"schedule": [{"keep_prob": value}]})
    assert cfg.schedule[0].keep_prob == value


def test_both_keep_prob_and_layers():
    message = _reject({"schedule": [{"layers": 6}, {"keep_prob": 0.5, "layers": 8}]})
    assert message == 'raptr.schedule[1]: give exactly one of "keep_prob" or "layers"'


def test_neither_keep_prob_nor_layers():
    message = _reject({"schedule": [{"steps": 10}]})
    assert message == 'raptr.schedule[0]: give exactly one of "keep_prob" or "layers"'


def test_both_steps_and_fraction():
    message = _reject({"schedule": [{"layers": 6, "steps": 5, "fraction": 0.5}]})
    assert message == 'raptr.schedule[0]: give at most one of "steps" or "fraction"'


@pytest.mark.parametrize("text", ["6-8-", "-6-8", "abc", "", " ", "6--8", "6-8-x", "6,8,12",
                                  "6.-12", "six-twelve"])
def test_malformed_schedule_strings(text):
    message = _reject({"enabled": True, "schedule": text})
    assert message.startswith("raptr.schedule: ")
    assert json.dumps(text) in message
    assert "6-8-10-12" in message  # says what is allowed


def test_schedule_string_with_a_newline_still_gives_one_line():
    _reject({"enabled": True, "schedule": "6\n8"})


def test_unknown_key_with_a_newline_still_gives_one_line():
    message = _reject({"a\nb": 1})
    assert "unknown key" in message


@pytest.mark.parametrize("block", [{"enabled": True}, {"enabled": True, "schedule": None},
                                   {"enabled": True, "schedule": []}])
def test_enabled_without_schedule(block):
    message = _reject(block)
    assert message.startswith("raptr.schedule: required when")


@pytest.mark.parametrize("block, kind", [([], "list"), ("6-8-10-12", "str"), (3, "int"),
                                         (True, "bool")])
def test_non_dict_block(block, kind):
    message = _reject(block)
    assert message == f"raptr: expected an object {{...}}, got {kind}"


def test_config_error_is_a_value_error_with_exit_code_2():
    with pytest.raises(ConfigError) as info:
        parse_raptr_block({"foo": 1})
    assert isinstance(info.value, ValueError) and isinstance(info.value, MegaraptrError)
    assert info.value.exit_code == 2
    assert info.value.key == "raptr.foo"


# ---------------------------------------------------------------- loading the DeepSpeed JSON


def test_load_ds_config_from_path(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": 8, "raptr": {"enabled": False}}))
    assert load_ds_config(path) == {"train_batch_size": 8, "raptr": {"enabled": False}}
    assert load_ds_config(str(path)) == {"train_batch_size": 8, "raptr": {"enabled": False}}


def test_load_ds_config_copies_a_dict_deeply():
    original = {"raptr": {"fixed_layers": [0, -1]}, "zero_optimization": {"stage": 2}}
    loaded = load_ds_config(original)
    assert loaded == original
    loaded["raptr"]["fixed_layers"].append(3)
    loaded["zero_optimization"]["stage"] = 3
    assert original == {"raptr": {"fixed_layers": [0, -1]}, "zero_optimization": {"stage": 2}}


def test_load_ds_config_missing_file(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_ds_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("deepspeed_config: cannot read ")
    assert str(path) in message


def test_load_ds_config_invalid_json_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "train_batch_size": 8,\n  "raptr": {"enabled": true,}\n}\n')
    with pytest.raises(ConfigError) as info:
        load_ds_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"deepspeed_config: {path} is not valid JSON: ")
    assert "line 3 " in message


def test_load_ds_config_rejects_a_non_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError) as info:
        load_ds_config(path)
    assert str(info.value) == f"deepspeed_config: {path} must hold a JSON object"


def test_split_ds_config_removes_the_raptr_key(tmp_path):
    ds = {"train_batch_size": 8, "bf16": {"enabled": True},
          "raptr": {"enabled": True, "schedule": "6-8-10-12", "seed": 3}}
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    for source in (ds, path):
        raptr, rest = split_ds_config(source)
        assert rest == {"train_batch_size": 8, "bf16": {"enabled": True}}
        assert raptr.enabled and raptr.seed == 3 and len(raptr.schedule) == 4
    assert "raptr" in ds  # the caller's dict is not modified


def test_split_ds_config_without_raptr_is_disabled():
    raptr, rest = split_ds_config({"train_batch_size": 8})
    assert raptr.enabled is False
    assert rest == {"train_batch_size": 8}


def test_split_ds_config_validates_the_block():
    with pytest.raises(ConfigError) as info:
        split_ds_config({"raptr": {"enabled": True, "schedule": "6-8-"}})
    assert str(info.value).startswith("raptr.schedule: ")


@pytest.mark.parametrize("key", ["raptor", "Raptr", "rapt", "raptr_", "RAPTOR"])
def test_a_misspelt_raptr_block_is_refused(key):
    with pytest.raises(ConfigError, match=rf'^{key}: unknown top-level key; did you mean "raptr"'):
        split_ds_config({key: {"enabled": True, "schedule": "2-4"}, "train_batch_size": 8})


def test_deepspeed_keys_are_not_taken_for_a_misspelt_raptr():
    raptr, ds = split_ds_config({"amp": {}, "bf16": {}, "fp16": {}, "tensorboard": {},
                                 "raptr": {"enabled": False}})
    assert not raptr.enabled and "raptr" not in ds


def test_a_warmup_as_long_as_the_run_is_a_warning():
    config = {"scheduler": {"type": "WarmupDecayLR", "params": {"warmup_num_steps": 30}}}
    assert scheduler_warmup_note(config, 300) is None
    note = scheduler_warmup_note(config, 30)
    assert note.startswith("warning: scheduler.params.warmup_num_steps 30 is not below the "
                           "run's 30 steps")

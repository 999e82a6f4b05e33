import pytest
import yaml

from engine.config import RunConfig, build_config, live_keys, parse_override, validate_config
from engine.errors import ConfigError


def test_defaults_validate_and_resolve_method_params():
    cfg = RunConfig()
    assert cfg.method == "simclr"
    assert cfg.params["temperature"] == 0.5  # SimCLR's CIFAR default
    assert cfg.params["proj_out"] == 128


def test_unknown_top_level_and_nested_keys_are_named():
    with pytest.raises(ConfigError, match="unknown config key 'optim.lrr'"):
        validate_config({"optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match="unknown config key 'params.temprature'"):
        validate_config({"params": {"temprature": 0.1}})
    # the method's params are checked as a whole: still one short line naming the key
    with pytest.raises(ConfigError) as e:
        validate_config({"method": "mae", "params": {"mask_tpye": "grid"}})
    assert str(e.value) == "unknown config key 'params.mask_tpye'"
    with pytest.raises(ConfigError) as e:
        validate_config({"params": {"temperature": -1}})
    assert str(e.value) == "invalid value for 'params.temperature': Input should be greater than 0 (got -1)"


def test_out_of_range_values_are_rejected_with_the_key():
    with pytest.raises(ConfigError, match="train.batch_size"):
        validate_config({"train": {"batch_size": 0}})
    with pytest.raises(ConfigError, match="params.temperature"):
        validate_config({"params": {"temperature": -1}})
    with pytest.raises(ConfigError, match="scale"):
        validate_config({"aug": {"global_crops": {"scale": [0.9, 0.1]}}})


def test_unknown_method():
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        validate_config({"method": "nope"})


def test_overrides_parse_yaml_scalars_and_apply():
    assert parse_override("optim.lr=0.1") == (["optim", "lr"], 0.1)
    assert parse_override("aug.global_crops.scale=[0.2, 1.0]") == (["aug", "global_crops", "scale"], [0.2, 1.0])
    cfg = build_config({}, ["optim.lr=0.05", "params.temperature=0.2", "model.cifar_stem=true"])
    assert cfg.optim.lr == 0.05 and cfg.params["temperature"] == 0.2 and cfg.model.cifar_stem is True
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("optim.lr")


def test_yaml_round_trip(tmp_path):
    cfg = build_config({}, ["optim.lr=0.05", "train.steps=7"])
    cfg.save(tmp_path / "c.yaml")
    again = validate_config(yaml.safe_load((tmp_path / "c.yaml").read_text()))
    assert again == cfg
    assert not list(tmp_path.glob("*.tmp"))


def test_schema_has_ranges_and_help_for_forms():
    schema = RunConfig.model_json_schema()
    optim = schema["$defs"]["OptimConfig"]["properties"]
    assert optim["lr"]["description"]
    assert optim["lr"]["exclusiveMinimum"] == 0
    from engine.methods import get_method

    p = get_method("simclr").Params.model_json_schema()["properties"]["temperature"]
    assert p["exclusiveMinimum"] == 0 and "temperature" in p["description"].lower()


def test_live_keys_include_method_declared_ones():
    keys = live_keys(RunConfig())
    assert "optim.lr" in keys and "params.temperature" in keys


def test_a_preset_file_is_also_a_config_file() -> None:
    from engine.config import load_yaml, validate_config
    from engine.presets import PRESET_DIR

    raw = load_yaml(PRESET_DIR / "simclr_cifar.yaml")
    assert isinstance(raw["description"], str)
    assert validate_config(raw).method == "simclr"  # the description is a comment


def test_applies_when_hints_are_in_the_schema_and_match_values() -> None:
    from engine.config import RunConfig, condition_holds

    props = RunConfig.model_json_schema()["$defs"]
    assert props["ModelConfig"]["properties"]["patch_size"]["applies_when"] == {"model.arch": ["vit*"]}
    assert props["DataConfig"]["properties"]["workers"]["applies_when"] == {"data.source": ["!shapes"]}
    assert condition_holds("vit_small", ["vit*"]) and not condition_holds("resnet18", ["vit*", "swin*"])
    assert condition_holds("LARS", ["sgd", "lars"]) and not condition_holds("adamw", ["sgd", "lars"])
    assert condition_holds("/data/x.tar.gz", ["!shapes"]) and not condition_holds("shapes", ["!shapes"])
    assert not condition_holds(None, ["vit*"])


@pytest.mark.parametrize("key, value", [("aug.blur_sigma", [0, 0]), ("aug.ratio", [2.0, 1.0]),
                                        ("aug.ratio", [0, 1]), ("aug.std", [0.2, 0.0, 0.2])])
def test_augmentation_ranges_are_validated(key, value) -> None:
    from engine.config import validate_config
    from engine.errors import ConfigError

    section, name = key.split(".")
    with pytest.raises(ConfigError, match=name):
        validate_config({"method": "simclr", section: {name: value}})


# a key given twice is refused by the loader itself (fast; the CLI test in
# test_bad_input.py only catches a broken check by starting a full default-size run)
def test_load_yaml_refuses_a_key_given_twice(tmp_path) -> None:
    from engine.config import load_yaml
    from engine.errors import ConfigError

    p = tmp_path / "c.yaml"
    p.write_text("method: simclr\noptim:\n  lr: 0.1\n  weight_decay: 0.0\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"line 5.*the key 'lr' appears twice"):
        load_yaml(p)
    p.write_text("method: simclr\nmethod: byol\n")  # top level too
    with pytest.raises(ConfigError, match="the key 'method' appears twice"):
        load_yaml(p)
    p.write_text("optim: {lr: 0.1}\ntrain: {lr: 0.1}\n")  # the same key in two mappings is fine
    assert load_yaml(p) == {"optim": {"lr": 0.1}, "train": {"lr": 0.1}}


# per-view probabilities above 1 are refused too (not only negative ones)
@pytest.mark.parametrize("key, value", [("blur_p", 1.5), ("blur_p", [0.5, 1.2]), ("solarize_p", 2.0),
                                        ("blur_p", -0.1)])
def test_view_probabilities_must_be_within_0_and_1(key, value) -> None:
    from engine.config import validate_config
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match=key):
        validate_config({"method": "simclr", "aug": {key: value}})


def test_config_errors_lists_every_invalid_setting():
    from engine.config import config_errors, validate_config
    from engine.errors import ConfigError

    raw = {"optim": {"lr": -1, "weight_decay": -2}, "train": {"batch_size": 0}}
    errs = config_errors(raw)
    assert [e.split("'")[1] for e in errs] == ["optim.lr", "optim.weight_decay", "train.batch_size"]
    with pytest.raises(ConfigError) as first:
        validate_config(raw)
    assert str(first.value) == errs[0]  # the same line the CLI prints for the first
    assert config_errors({"method": "simclr"}) == []

"""load_config: packaged defaults, named configs, typed overrides, unknown-key errors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aqqua_geo.foundation.config import PACKAGED_DEFAULT, ConfigError, load_config, resolve_config_path


def test_defaults_alone_are_dinov2_like():
    cfg = load_config()
    assert cfg["teacher"]["warmup_teacher_temp"] == 0.04 and cfg["teacher"]["teacher_temp"] == 0.07
    assert cfg["ibot"]["mask_ratio_min_max"] == [0.1, 0.5]
    assert cfg["optim"]["scaling_rule"] == "sqrt_wrt_1024"
    assert PACKAGED_DEFAULT.is_file()


@pytest.mark.parametrize("name", ["tiny", "vit_s14", "vit_b14", "vit_l14"])
def test_named_configs_merge_over_defaults_and_build(name):
    from aqqua_geo.foundation.vit import resolve_model_cfg

    cfg = load_config(name)
    assert resolve_config_path(name).name == f"{name}.yaml"
    assert cfg["crops"]["global_max_tokens"] <= cfg["model"]["max_tokens_per_image"]
    resolve_model_cfg(cfg["model"])  # every model block is one vit.py accepts
    assert cfg["optim"]["betas"] == [0.9, 0.999]  # untouched defaults survive the merge


def test_overrides_are_yaml_typed():
    cfg = load_config("tiny", [
        "optim.base_lr=1e-3", "crops.local_size_um=[100, 400]", "train.max_minutes=null",
        "model.grad_checkpointing=true", "curation.weights={instrument: 0.5}",
        "augment.profiles.MyCam.noise_std=0.05",
    ])
    assert cfg["optim"]["base_lr"] == pytest.approx(1e-3) and isinstance(cfg["optim"]["base_lr"], float)
    assert cfg["crops"]["local_size_um"] == [100, 400]
    assert cfg["train"]["max_minutes"] is None and cfg["model"]["grad_checkpointing"] is True
    assert cfg["curation"]["weights"] == {"instrument": 0.5, "cluster": 1.0}
    assert cfg["augment"]["profiles"]["MyCam"] == {"noise_std": 0.05}


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.base_rl=1", "unknown config key 'optim.base_rl' (did you mean 'base_lr'?)"),
        ("nosuch.key=1", "unknown config key 'nosuch.key'"),
        ("train=3", "'train' is a section"),
        ("model.patch_size.x=1", "'model.patch_size' is a value, not a section"),
        ("optim.base_lr", "is not of the form key.sub=value"),
        ("curation.weights={taxon: 1}", "unknown config key 'curation.weights.taxon'"),
        ("optim.base_lr=[1, 2", "value is not valid YAML"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=None) as err:
        load_config("tiny", [override])
    assert message in str(err.value)


def test_unknown_key_in_a_config_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  base_lr: 0.1\n  warmup_epochs: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'optim.warmup_epochs'"):
        load_config(path)


def test_missing_config_names_the_alternatives(tmp_path):
    with pytest.raises(ConfigError, match=r"config named 'vit_z99'.*available: \[.*'tiny'"):
        load_config("vit_z99")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


@given(st.floats(min_value=1e-9, max_value=1e3, allow_nan=False), st.sampled_from(["{:g}", "{:e}", "{!r}"]))
def test_float_overrides_round_trip(value, fmt):
    text = fmt.format(value)
    assert load_config(None, [f"optim.base_lr={text}"])["optim"]["base_lr"] == pytest.approx(float(text))

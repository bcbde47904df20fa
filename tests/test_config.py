import pytest
import yaml

from igptlib.config import (
    PRESETS,
    ConfigError,
    DataConfig,
    RunConfig,
    apply_overrides,
    data_config_for,
    read_json,
    run_config,
    write_atomically,
    write_json,
)


def test_yaml_round_trip(tmp_path):
    config = DataConfig(dataset="fashion-mnist", n_px=16, clusters=8, augment=["rotate"], limit_train=100)
    path = config.save_yaml(tmp_path / "data.yaml")
    assert DataConfig.load_yaml(path) == config
    assert not list(tmp_path.glob("*.partial"))


def test_a_write_that_fails_halfway_leaves_the_earlier_file_whole(tmp_path):
    path = write_json(tmp_path / "runs" / "metrics.json", {"global_step": 655})
    assert read_json(path) == {"global_step": 655}
    # A lone surrogate cannot be encoded: the write fails after its file was opened, as a full disk would.
    with pytest.raises(UnicodeEncodeError):
        write_atomically(path, '{"global_step": 1310, "note": "\ud800"}')
    assert read_json(path) == {"global_step": 655}
    write_json(path, {"global_step": 1310})
    assert read_json(path) == {"global_step": 1310}


def test_unknown_key_is_rejected_with_the_known_keys(tmp_path):
    (tmp_path / "bad.yaml").write_text("dataset: mnist\nclustres: 16\n")
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['clustres'\].*clusters"):
        DataConfig.load_yaml(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"n_px": "28"}, "n_px: expected an integer, got '28'"),
        ({"n_px": True}, "n_px: expected an integer"),
        ({"val_fraction": "a tenth"}, "val_fraction: expected a number"),
        ({"augment": "crop"}, "augment: expected a list"),
        ({"augment": ["crop", "zoom"]}, r"unknown augmentation\(s\) \['zoom'\]"),
        ({"dataset": "mnsit"}, "unknown dataset 'mnsit'"),
        ({"val_fraction": 1.5}, "between 0 and 1"),
        ({"clusters": 1}, "clusters: expected 2..4096"),
        ({"limit_train": 0}, "limit_train: expected a positive integer"),
    ],
)
def test_wrong_values_are_rejected_clearly(values, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig.from_dict(values)


def test_ints_are_accepted_where_floats_belong_and_none_where_optional():
    config = DataConfig.from_dict({"rotate_degrees": 15, "limit_test": None})
    assert config.rotate_degrees == 15.0 and isinstance(config.rotate_degrees, float)
    assert config.limit_test is None


def test_invalid_yaml_and_missing_file(tmp_path):
    (tmp_path / "broken.yaml").write_text("dataset: [mnist\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        DataConfig.load_yaml(tmp_path / "broken.yaml")
    with pytest.raises(ConfigError, match="no such config file"):
        DataConfig.load_yaml(tmp_path / "absent.yaml")


def test_default_palette_path_names_what_it_holds():
    path = DataConfig(dataset="mnist", clusters=16, n_px=28, seed=3).palette_path
    assert path.name == "mnist-k16-28px-seed3.npy"


def test_a_palette_fitted_on_a_subset_gets_its_own_file():
    assert DataConfig(limit_train=512).palette_path.name == "mnist-k16-28px-seed0-first512.npy"


def test_every_preset_makes_a_run_config_that_round_trips(tmp_path):
    for size in PRESETS:
        config = run_config(size, "mnist", "bert")
        assert config.model.vocab_size == config.data.clusters == 16
        assert RunConfig.load_yaml(config.save_yaml(tmp_path / f"{size}.yaml")) == config


def test_run_configs_are_strict():
    values = run_config("xs").to_dict()
    with pytest.raises(ConfigError, match=r"train: unknown key\(s\) \['max_steps'\]"):
        RunConfig.from_dict({**values, "train": {**values["train"], "max_steps": 3}})
    with pytest.raises(ConfigError, match="RunConfig.train.steps: expected an integer, got 'many'"):
        RunConfig.from_dict({**values, "train": {**values["train"], "steps": "many"}})
    with pytest.raises(ConfigError, match="precision"):
        RunConfig.from_dict({**values, "train": {**values["train"], "precision": "bf16"}})


def test_the_model_takes_its_vocabulary_and_image_side_from_the_data(tmp_path):
    values = run_config("xs").to_dict()
    assert "vocab_size" not in values["model"] and "n_px" not in values["model"]  # set once, in data
    config = RunConfig.from_dict({**values, "data": {**values["data"], "clusters": 8, "n_px": 14}})
    assert (config.model.vocab_size, config.model.n_px) == (8, 14)
    assert data_config_for(config.model, root="elsewhere") == config.data.replace(root="elsewhere")
    assert config.replace(data=config.data.replace(clusters=4).to_dict()).model.vocab_size == 4
    # An older run's config.yaml names them: it loads when they agree with the data, as they had to.
    older = {**values, "model": {**values["model"], "vocab_size": 16, "n_px": 28}}
    (tmp_path / "older.yaml").write_text(yaml.safe_dump(older))
    assert RunConfig.load_yaml(tmp_path / "older.yaml") == run_config("xs")
    with pytest.raises(ConfigError, match="model.vocab_size is 8 but data.clusters is 16"):
        RunConfig.from_dict({**values, "model": {**values["model"], "vocab_size": 8}})
    with pytest.raises(ConfigError, match="model.n_px is 14 but data.n_px is 28"):
        RunConfig(model=run_config("xs").model.replace(n_px=14))


def test_overrides_change_any_field_of_any_section():
    values = apply_overrides(run_config("xs").to_dict(), ["optim.lr=3e-3", "data.augment=[]", "model.n_head=1"])
    assert (values["optim"]["lr"], values["data"]["augment"], values["model"]["n_head"]) == (3e-3, [], 1)
    for bad in ["optim.lr", "optim.speed=2", "lr=3"]:
        with pytest.raises(ConfigError, match="expected SECTION.FIELD=VALUE"):
            apply_overrides(run_config("xs").to_dict(), [bad])

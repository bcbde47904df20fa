import pytest

from igptlib.config import ConfigError, DataConfig


def test_yaml_round_trip(tmp_path):
    config = DataConfig(dataset="fashion-mnist", n_px=16, clusters=8, augment=["rotate"], limit_train=100)
    path = config.save_yaml(tmp_path / "data.yaml")
    assert DataConfig.load_yaml(path) == config
    assert not list(tmp_path.glob("*.partial"))


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

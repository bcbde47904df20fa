"""The `igpt` command on real data: what it prints, what it writes, how it fails; the flags of config fields."""
import argparse
import dataclasses
import importlib.metadata
import json
import subprocess
import sys
import typing

import numpy as np
import pytest
import yaml

from igptlib.cli import SECTIONS, build_parser, data_config, field_comments, main, train_config
from igptlib.config import DERIVED_FROM_DATA, RunConfig, run_config
from igptlib.quantize import load_palette


def test_igpt_data_reports_source_counts_and_split(mnist_root, capsys):
    assert main(["data", "--dataset", "mnist", "--root", str(mnist_root)]) == 0
    out = capsys.readouterr().out
    assert "from files under the data root" in out
    assert "train: 60000 images (1, 28, 28)" in out and "test: 10000 images" in out
    assert "54000 train, 6000 validation" in out


def test_igpt_centroids_writes_a_palette_then_reuses_it(mnist_root, tmp_path, capsys):
    out = tmp_path / "mnist16.npy"
    args = ["centroids", "--dataset", "mnist", "--root", str(mnist_root), "--clusters", "16", "--out", str(out)]
    assert main(args + ["--figure", str(tmp_path / "palette.png")]) == 0
    palette = load_palette(out, clusters=16, channels=1)
    assert (tmp_path / "palette.png").stat().st_size > 0
    assert main(args) == 0
    assert "exists; loading it" in capsys.readouterr().out
    np.testing.assert_array_equal(load_palette(out), palette)


def test_igpt_augment_writes_the_set_and_a_grid(mnist_root, tmp_path):
    # The whole training split (54,000 images) is written; a few seconds on 2 cores.
    args = ["augment", "--root", str(mnist_root), "--out", str(tmp_path / "aug.npz"), "--grid", str(tmp_path / "grid.png")]
    assert main(args) == 0
    assert np.load(tmp_path / "aug.npz")["images"].shape == (54000, 1, 28, 28)
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_errors_are_clear_and_exit_2(tmp_path, capsys):
    assert main(["centroids", "--root", str(tmp_path)]) == 2
    assert "no mnist files under" in capsys.readouterr().err
    bad = tmp_path / "palette.npy"
    bad.write_text("not an array")
    assert main(["centroids", "--root", str(tmp_path), "--out", str(bad)]) == 2
    assert "not a .npy array" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["data", "--dataset", "mnsit"])
    assert caught.value.code == 2
    assert "invalid choice: 'mnsit'" in capsys.readouterr().err


def test_igpt_complete_draws_the_completion_figure(mnist_root, tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    from igptlib.datasets import load_split

    digit = load_split("mnist", mnist_root, train=False)[0][0, 0].numpy()
    Image.fromarray(255 - np.kron(digit, np.ones((2, 2), np.uint8))).save(tmp_path / "paper.jpg")  # dark on white
    out = tmp_path / "figs" / "completion.png"
    args = ["complete", "--model", str(tiny_checkpoint), "--image", str(tmp_path / "paper.jpg"),
            "--samples", "3", "--rows", "20", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "resized 56x56 to 28x28" in printed and "white background detected" in printed
    assert "3 completions of the bottom 8 rows" in printed
    assert out.stat().st_size > 0


def test_igpt_complete_turns_the_image_as_asked_or_as_the_model_finds_it_most_likely(mnist_root, tiny_checkpoint, tmp_path, capsys):
    from PIL import Image

    from igptlib.datasets import load_split

    Image.fromarray(load_split("mnist", mnist_root, train=False)[0][0, 0].numpy()).save(tmp_path / "seven.png")
    args = ["complete", "--model", str(tiny_checkpoint), "--image", str(tmp_path / "seven.png"), "--samples", "1",
            "--out", str(tmp_path / "completion.png")]
    assert main(args + ["--turn", "90"]) == 0
    assert "turned 90° anticlockwise, as asked" in capsys.readouterr().out
    assert main(args + ["--turn", "auto"]) == 0
    assert "the model finds it most likely that way (nats per pixel: none " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(args + ["--turn", "45"])
    assert "invalid choice: '45'" in capsys.readouterr().err


def test_igpt_complete_errors_are_clear(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "notes.png").write_text("not a picture")
    assert main(["complete", "--model", str(tiny_checkpoint), "--image", str(tmp_path / "notes.png")]) == 2
    assert "not an image (expected a PNG, JPG or JPEG file)" in capsys.readouterr().err
    assert main(["complete", "--model", str(tmp_path / "notes.png"), "--image", str(tmp_path / "notes.png")]) == 2
    assert "not a loadable checkpoint" in capsys.readouterr().err


# -- the flags of config fields, generated from the dataclasses --------------------------------------


def test_igpt_train_has_a_flag_for_every_run_config_field():
    expected = {f"{section}.{field.name}" for section, cls in typing.get_type_hints(RunConfig).items()
                for field in dataclasses.fields(cls)}
    expected -= {f"model.{field}" for field in DERIVED_FROM_DATA} | {"optim.finetune", "train.init_from"}
    given = {dest: value for dest, value in vars(build_parser().parse_args(["train"])).items() if "." in dest}
    assert set(given) == expected
    assert set(given.values()) == {None}  # not given: the preset's values stand


def test_flags_and_set_reach_the_config(tmp_path):
    args = build_parser().parse_args(["train", "--size", "xs", "--n-layer", "2", "--lr", "0.01", "--augment", "--no-test",
                                      "--device", "cpu", "--devices", "auto", "--set", "model.n_embd=32",
                                      "--run-dir", str(tmp_path)])
    config, run_dir = train_config(args)
    assert (config.model.n_layer, config.optim.lr, config.data.augment, config.model.n_embd) == (2, 0.01, [], 32)
    assert (config.train.test, config.train.accelerator, config.train.devices) == (False, "cpu", "auto")
    assert config.optim.warmup_steps == run_config("xs").optim.warmup_steps and run_dir == tmp_path
    config = data_config(build_parser().parse_args(["centroids", "--method", "kmeans", "--pixels", "500", "--n-px", "14"]))
    assert (config.palette_method, config.palette_pixels, config.n_px, config.clusters) == ("kmeans", 500, 14, 16)


def test_a_bad_choice_or_field_is_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["train", "--norm", "batch"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert refused.value.code == 2 and len(lines) == 1
    assert "argument --norm: invalid choice: 'batch' (choose from 'layer', 'rms')" in lines[0]
    assert main(["train", "--set", "model.n_px=14", "--run-dir", str(tmp_path / "run")]) == 2  # derived from the data
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--set 'model.n_px=14': expected SECTION.FIELD=VALUE with a known field" in lines[0]
    assert not (tmp_path / "run").exists()


def test_a_flags_help_is_its_config_fields_comment(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--clusters CLUSTERS palette size, which is also the model's vocabulary (default: 16)" in shown
    assert "--lr LR the peak learning rate, reached at the end of warm-up (default: 0.001)" in shown


def test_every_config_field_has_a_help_text():
    missing = [f"{section}.{field.name}" for section, cls in SECTIONS.items() for field in dataclasses.fields(cls)
               if not field_comments(cls).get(field.name)]
    assert not missing, f"config fields without a trailing comment, so their flags have no help: {missing}"


# -- the command line's conventions: --model, shared flags, --version, a quick --help ---------------

# Every command that takes a model, with what it needs besides: each names the model by --model.
MODEL_COMMANDS = [
    ["train"], ["complete", "--image", "digit.png"], ["evaluate"], ["export"], ["record"],
    ["card", "--run-dir", "runs/x"], ["robustness"], ["finetune-sweep"],
]
# The spellings that --model (and card's --run-dir, bench sample's --size) replaced, on command lines
# that are otherwise whole: argparse refuses each as it refuses any unknown flag.
OLD_SPELLINGS = [
    ["train", "--finetune-from", "x.ckpt"], ["complete", "--image", "digit.png", "--checkpoint", "x.ckpt"],
    ["evaluate", "--model", "m", "--checkpoint", "x.ckpt"], ["export", "--model", "m", "--checkpoint", "x.ckpt"],
    ["finetune-sweep", "--model", "m", "--from", "x.ckpt"],
    ["card", "--model", "mnist", "--run-dir", "runs/x", "--run", "runs/x"],
    ["card", "--model", "mnist", "--run-dir", "runs/x", "--name", "mnist"],
    ["record", "--model", "runs/x", "runs/x"], ["bench", "sample", "--preset", "xs"],
]


@pytest.mark.parametrize("command", MODEL_COMMANDS, ids=[command[0] for command in MODEL_COMMANDS])
def test_every_command_that_takes_a_model_takes_it_by_model(command):
    for model in ("mnist", "models/mnist.safetensors", "runs/x/checkpoints/best.ckpt"):
        assert build_parser().parse_args([*command, "--model", model]).model == model


@pytest.mark.parametrize("command", OLD_SPELLINGS, ids=[f"{command[0]} {command[-2]}" for command in OLD_SPELLINGS])
def test_the_old_spellings_are_refused(command, capsys):
    with pytest.raises(SystemExit) as refused:
        main(command)
    assert refused.value.code == 2
    assert f"unrecognized arguments: {' '.join(command[-2:] if command[-2].startswith('--') else command[-1:])}" in (
        capsys.readouterr().err)


def test_flags_that_several_commands_share_mean_the_same_everywhere():
    """--device, --budget-minutes, --size, --seed and --model: one declaration each, so one type, choices and metavar."""
    def parsers(parser):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield sub
                    yield from parsers(sub)

    shared = {"--device", "--budget-minutes", "--size", "--seed", "--model"}
    found = {}
    for parser in parsers(build_parser()):
        for action in parser._actions:
            for flag in shared.intersection(action.option_strings):
                found.setdefault(flag, set()).add((action.type or str, tuple(action.choices or ()), action.metavar))
    assert set(found) == shared
    assert {flag: len(kinds) for flag, kinds in found.items()} == dict.fromkeys(shared, 1)


def test_igpt_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"igpt {importlib.metadata.version('igptlib')}"


def test_the_help_lists_the_course_commands_apart_from_those_that_maintain_the_report(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    course, maintenance = shown.split("the course's commands:")[1].split("commands that maintain the report and the benchmarks:")
    listed = lambda text: {line.split()[0] for line in text.splitlines() if line.startswith("  ") and line[2] != " "}
    assert {"data", "train", "complete", "evaluate", "export", "sweep", "experiment"} <= listed(course)
    assert {"record", "report", "card", "finetune-sweep", "bench"} <= listed(maintenance)
    assert not listed(course) & listed(maintenance)


HEAVY = ("torch", "torchvision", "lightning", "sklearn", "matplotlib")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"], ["bench", "sample", "--help"],
                                  ["--version"]])
def test_help_and_version_import_no_heavy_module(argv):
    code = ("import sys\nfrom igptlib.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            f"print('loaded:', sorted(name for name in {HEAVY!r} if name in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "loaded: []"


def test_the_package_api_loads_its_modules_on_first_use():
    import igptlib

    code = ("import sys, igptlib\nbefore = 'torch' in sys.modules\nfrom igptlib import load_model, RunConfig\n"
            "print(before, 'torch' in sys.modules, load_model.__module__, igptlib.__version__)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["False", "True", "igptlib.shipped", importlib.metadata.version("igptlib")]
    with pytest.raises(AttributeError, match="freed_memory_reused"):
        igptlib.freed_memory_reused  # the allocator setting is training's own, not the API's


def test_print_config_shows_the_values_a_run_would_use_and_trains_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--size", "xs", "--lr", "0.01", "--set", "model.n_embd=32", "--print-config"]) == 0
    shown = capsys.readouterr().out
    assert shown.splitlines()[0] == "# igpt train would train this config into runs/mnist-xs"
    expected = run_config("xs")
    expected = expected.replace(model=expected.model.replace(n_embd=32).to_dict(),
                                optim=expected.optim.replace(lr=0.01).to_dict())
    assert RunConfig.from_dict(yaml.safe_load(shown)) == expected  # the preset's 500 steps, not the dataclass's
    assert list(tmp_path.iterdir()) == []


def test_fine_tuning_starts_from_a_model_file_by_its_name(tmp_path, monkeypatch, capsys):
    from igptlib.shipped import MODELS_DIR

    monkeypatch.chdir(tmp_path)
    assert main(["train", "--model", "mnist", "--print-config"]) == 0
    shown = capsys.readouterr().out
    config = RunConfig.from_dict(yaml.safe_load(shown))
    assert config.optim.finetune and config.train.init_from == str(MODELS_DIR / "mnist.safetensors")
    assert "into runs/mnist-finetune" in shown.splitlines()[0]


def test_igpt_record_takes_a_run_folder_or_a_checkpoint_in_it(tiny_checkpoint, tmp_path, capsys):
    assert main(["record", "--model", str(tiny_checkpoint), "--name", "tiny", "--records", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "tiny" / "record.json").read_text())["source"] == str(tiny_checkpoint.parent.parent)
    assert main(["record", "--model", str(tmp_path / "loose.ckpt"), "--records", str(tmp_path)]) == 2
    assert "loose.ckpt: not in a run folder" in capsys.readouterr().err

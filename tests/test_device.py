"""One device choice, auto, cpu or cuda, for every command, the notebooks and the explorer.

These run on the CPU: auto must pick it when there is no GPU, and asking for cuda without one must
be a clear error before any work is done.
"""
import pytest
import torch

from igptlib.cli import main
from igptlib.config import ConfigError
from igptlib.course import CourseParameters
from igptlib.device import gpu_autocast, lightning_accelerator, resolve_device

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what happens on a machine without a GPU")


def test_auto_is_the_gpu_when_there_is_one_and_the_cpu_otherwise():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert lightning_accelerator("auto") == ("gpu" if torch.cuda.is_available() else "cpu")
    assert lightning_accelerator("cpu") == "cpu"


@pytest.mark.parametrize("choice", ["gpu", "tpu", "cpu:1", ""])
def test_an_unknown_device_names_the_choices(choice):
    with pytest.raises(ValueError, match="expected one of auto, cpu, cuda"):
        resolve_device(choice)


@no_gpu
@pytest.mark.parametrize("choice", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_a_clear_error(choice):
    with pytest.raises(ValueError, match="PyTorch sees no CUDA GPU on this machine; use --device cpu or auto"):
        resolve_device(choice)
    with pytest.raises(ValueError, match="no CUDA GPU"):
        lightning_accelerator(choice)


def test_sampling_on_the_cpu_runs_without_autocast():
    with gpu_autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32


@no_gpu
@pytest.mark.parametrize("command", [
    ["complete", "--image", "digit.png", "--device", "cuda"],
    ["evaluate", "--model", "best.ckpt", "--device", "cuda"],
    ["train", "--size", "xs", "--device", "cuda", "--run-dir", "RUN"],
    ["sweep", "--sizes", "xs", "--smoke", "--device", "cuda", "--runs", "RUNS"],
])
def test_every_command_refuses_cuda_without_a_gpu_before_doing_anything(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"igpt {command[0]}: error: device 'cuda': PyTorch sees no CUDA GPU" in err
    assert list(tmp_path.iterdir()) == [], "nothing was written"


def test_the_device_flag_takes_only_the_three_choices(capsys):
    with pytest.raises(SystemExit):
        main(["complete", "--image", "digit.png", "--device", "gpu"])
    assert "invalid choice: 'gpu' (choose from 'auto', 'cpu', 'cuda')" in capsys.readouterr().err


def test_notebook_parameters_check_the_device():
    assert CourseParameters(device="cpu").torch_device == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"parameter device: expected one of \['auto', 'cpu', 'cuda'\], got 'gpu'"):
        CourseParameters(device="gpu")


def test_a_training_config_names_a_device_choice():
    from igptlib.config import TrainConfig

    assert TrainConfig(accelerator="cpu").accelerator == "cpu"
    with pytest.raises(ConfigError, match=r"TrainConfig.accelerator: expected one of \['auto', 'cpu', 'cuda'\]"):
        TrainConfig(accelerator="tpu")


@no_gpu
def test_the_explorer_refuses_cuda_without_a_gpu():
    from igptlib.explorer import Explorer

    with pytest.raises(ValueError, match="no CUDA GPU"):
        Explorer("mnist", device="cuda")
    assert Explorer("mnist", device="auto").device == torch.device("cpu")

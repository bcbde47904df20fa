"""Training runs on real MNIST: run folder, checkpoints, resume after an interruption, DDP on the CPU."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import TensorDataset

from igptlib.config import ConfigError, RunConfig, run_config
from igptlib.cli import build_parser, train_config
from igptlib.model_files import CheckpointError
from igptlib.train import TrainBatches, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, mnist_root):
    """A data root of our own (palettes are written there) that shares the verified MNIST files."""
    root = tmp_path_factory.mktemp("data")
    (root / "MNIST").symlink_to(Path(mnist_root) / "MNIST", target_is_directory=True)
    return root


def smoke_config(root, objective: str = "ar", **train) -> RunConfig:
    """A tiny model on 40 real, augmented MNIST images: a few steps take seconds."""
    values = run_config(
        "xs", "mnist", objective, root=str(root), clusters=8, batch_size=8, augment=["crop", "flip"],
        limit_train=40, limit_val=16, limit_test=16,
    ).to_dict()
    values["model"].update(n_embd=32, n_layer=1, n_head=2)
    values["optim"].update(warmup_steps=2)
    values["train"].update({
        "steps": 6, "val_every": 3, "val_batches": 1, "save_every": 2, "checkpoint_steps": [3], "precision": "32-true",
        "progress_bar": False, "log_every": 1, "test": False, "accelerator": "cpu", "devices": 1, **train,
    })
    return RunConfig.from_dict(values)


class Crash(L.Callback):
    """Stops a run the hard way after `step` optimizer steps, as a crash or a pre-emption would."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated crash")


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(expected_run: Path, actual_run: Path) -> None:
    """The two runs' last checkpoints hold bit-identical weights."""
    expected, actual = weights(expected_run / "checkpoints/last.ckpt"), weights(actual_run / "checkpoints/last.ckpt")
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=0, atol=0, msg=name)


def test_command_line_flags_map_onto_the_config(tmp_path):
    parser = build_parser()
    args = parser.parse_args(["train", "--size", "m", "--objective", "bert", "--clusters", "8", "--steps", "7", "--devices", "2",
                              "--strategy", "ddp", "--num-nodes", "3", "--checkpoint-steps", "5", "--run-dir", str(tmp_path)])
    config, run_dir = train_config(args)
    assert (config.model.n_embd, config.model.objective, config.model.vocab_size, config.data.clusters) == (512, "bert", 8, 8)
    assert (config.train.steps, config.train.devices, config.train.strategy, config.train.num_nodes) == (7, 2, "ddp", 3)
    assert config.train.checkpoint_steps == [5] and run_dir == tmp_path
    assert train_config(parser.parse_args(["train"]))[1] == Path("runs/mnist-s")  # the notebooks' name
    assert train_config(parser.parse_args(["train", "--objective", "bert"]))[1] == Path("runs/mnist-s-bert")


def test_train_batches_resume_mid_epoch_and_shard_without_overlap():
    data = TensorDataset(torch.arange(20))
    step = {"now": 0}
    batches = TrainBatches(data, batch_size=3, seed=1, start_step=lambda: step["now"])
    epoch0, epoch0_again = list(batches), list(batches)
    assert len(batches) == 7 and torch.equal(torch.cat([b[0] for b in epoch0]).sort().values, torch.arange(20))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch0, epoch0_again))  # the order depends on (seed, epoch)
    step["now"] = 4  # resumed after 4 steps: the rest of epoch 0
    assert all(torch.equal(a[0], b[0]) for a, b in zip(epoch0[4:], list(batches), strict=True))
    step["now"] = 7  # epoch 1: another order
    assert not torch.equal(list(batches)[0][0], epoch0[0][0])
    shards = [torch.cat([b[0] for b in TrainBatches(data, 4, seed=1, rank=r, world_size=3)]) for r in range(3)]
    assert sum(len(s) for s in shards) == 18 and len(torch.cat(shards).unique()) == 18


@pytest.mark.parametrize("objective", ["ar", "bert"])
def test_an_interrupted_run_resumes_as_if_never_stopped(data_root, tmp_path, objective):
    config = smoke_config(data_root, objective)
    straight = train(config, tmp_path / "straight")
    assert straight["global_step"] == 6

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, tmp_path / "resumed", callbacks=[Crash(5)])  # last.ckpt was saved at step 4
    assert torch.load(tmp_path / "resumed/checkpoints/last.ckpt", weights_only=True)["global_step"] == 4
    resumed = train(config, tmp_path / "resumed", resume=True)
    assert resumed["global_step"] == 6

    # Same batches, augmentation and masks in the same order: the very same weights.
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")
    # The resumed session logs from step 4 on, in a log version of its own.
    with open(tmp_path / "resumed/logs/csv/version_1/metrics.csv") as f:
        steps = [int(row["step"]) for row in csv.DictReader(f)]
    assert min(steps) >= 4 and max(steps) >= 5

    folder = tmp_path / "straight"
    assert {p.name for p in (folder / "checkpoints").iterdir()} == {"last.ckpt", "best.ckpt", "step-3.ckpt"}
    assert RunConfig.load_yaml(folder / "config.yaml") == config
    saved = json.loads((folder / "metrics.json").read_text())
    assert saved["global_step"] == 6 and saved["best_val_nats_per_pixel"] > 0
    assert (folder / "logs/tensorboard/version_0").is_dir()


def test_a_time_budget_stops_at_a_checkpoint_and_the_run_resumes_as_if_never_stopped(data_root, tmp_path):
    config = smoke_config(data_root)
    config = config.replace(optim={**config.optim.to_dict(), "schedule": "wsd", "decay_fraction": 0.5})
    straight = train(config, tmp_path / "straight")
    stopped = train(config, tmp_path / "budget", budget_seconds=0)  # stops after its first step
    assert stopped["stopped_by_budget"] and stopped["global_step"] == 1 and not straight["stopped_by_budget"]
    assert torch.load(tmp_path / "budget/checkpoints/last.ckpt", weights_only=True)["global_step"] == 1
    resumed = train(config, tmp_path / "budget", resume=True)
    assert resumed["global_step"] == 6
    assert_same_weights(tmp_path / "straight", tmp_path / "budget")
    # wsd keeps the checkpoint where its decay begins (step 3 of 6): the one to extend the run from.
    assert (tmp_path / "straight/checkpoints/step-3.ckpt").exists()


def test_the_progress_bar_counts_steps_out_of_the_runs_steps(data_root, tmp_path, capsys):
    config = smoke_config(data_root, progress_bar=True)
    train(config, tmp_path / "run", budget_seconds=0)  # stops after its first step
    assert "training steps: " in capsys.readouterr().out.replace("\r", "\n")
    train(config, tmp_path / "run", resume=True)
    shown = capsys.readouterr().out.replace("\r", "\n")
    assert "| 6/6 [" in shown and "Epoch" not in shown  # not Lightning's "Epoch 0/-2"


@pytest.mark.parametrize("bf16_faster", [True, False])
def test_bf16_autocast_on_a_cpu_only_where_it_is_the_faster_and_the_run_records_which(
        data_root, tmp_path, monkeypatch, capsys, bf16_faster):
    # Which a CPU is cannot be chosen here: the measurement's answer is, so that both branches run.
    monkeypatch.setattr(sys.modules["igptlib.train"], "bf16_faster_on_cpu", lambda: bf16_faster)
    metrics = train(smoke_config(data_root, steps=2, precision="bf16-mixed"), tmp_path / "run")
    expected = "bf16-mixed" if bf16_faster else "32-true"
    assert metrics["precision"] == expected
    assert json.loads((tmp_path / "run/metrics.json").read_text())["precision"] == expected
    assert ("training in float32 (32-true) instead" in capsys.readouterr().out) is not bf16_faster


def test_a_run_resumed_on_another_machine_records_which_steps_ran_where(data_root, tmp_path, monkeypatch):
    from igptlib.records import record_run
    from igptlib.results import read_record, result

    def on_machine(name: str, bf16_faster: bool) -> None:
        monkeypatch.setattr(sys.modules["igptlib.train"], "describe_hardware", lambda: name)
        monkeypatch.setattr(sys.modules["igptlib.train"], "bf16_faster_on_cpu", lambda: bf16_faster)

    config, run = smoke_config(data_root, precision="bf16-mixed"), tmp_path / "run"
    on_machine("CPU A", bf16_faster=True)
    train(config, run, budget_seconds=0)  # step 1 on A, in bfloat16 autocast
    (run / "machines.json").unlink()  # as a run started before machines.json was kept: A is read from metrics.json
    on_machine("CPU B", bf16_faster=False)
    train(config, run, resume=True, budget_seconds=0)  # step 2 on B, in float32
    train(config, run, resume=True)  # steps 3 to 6 on B
    assert [(m["from_step"], m["hardware"], m["precision"]) for m in json.loads((run / "machines.json").read_text())] == [
        (0, "CPU A", "bf16-mixed"), (1, "CPU B", "32-true"), (2, "CPU B", "32-true")]

    entry = result(read_record(record_run(run, records=tmp_path / "records")))
    assert entry["hardware"] == "steps 1-1: CPU A (bfloat16 autocast); steps 2-6: CPU B (float32)"
    assert entry["training_precision"] is None  # no one precision to name beside the minutes

    train(config, tmp_path / "alone")  # one machine: its name and precision as metrics.json gives them
    alone = result(read_record(record_run(tmp_path / "alone", records=tmp_path / "records")))
    assert (alone["hardware"], alone["training_precision"]) == ("CPU B", "32-true")


def test_the_convergence_curve_records_every_validation_against_wall_minutes(data_root, tmp_path):
    import time

    from igptlib.bench_converge import ConvergenceCurve, minutes_to

    curve = ConvergenceCurve(time.perf_counter())
    train(smoke_config(data_root), tmp_path / "run", callbacks=[curve])
    assert [p["step"] for p in curve.points] == [3, 6]
    assert 0 < curve.points[0]["minutes"] <= curve.points[1]["minutes"]
    assert all(0 < p["val_nats_per_pixel"] < 3 for p in curve.points)
    best = min(p["val_nats_per_pixel"] for p in curve.points)
    assert minutes_to(curve.points, best) is not None and minutes_to(curve.points, best / 2) is None
    # Failing every validation, the final model's test value at the end of training counts.
    end = curve.points[-1]["minutes"] + 0.1
    assert minutes_to(curve.points, best / 2, final=(end, best / 3)) == end
    assert minutes_to(curve.points, best / 2, final=(end, best)) is None
    assert minutes_to(curve.points, best, final=(end, 0.0)) == minutes_to(curve.points, best)

    # The README's table is rewritten between its markers, and nothing around them changes.
    from igptlib.bench_converge import README_END, README_START, write_readme_section

    config = smoke_config(data_root)
    record = {"name": "tiny", "config": config.to_dict(), "curve": curve.points, "minutes_to": {"0.32": None, "0.31": None},
              "training": {"parameters": 1000, "steps": 6, "minutes": 0.1, "precision": "32-true"},
              "test": {"nats_per_pixel": curve.points[-1]["val_nats_per_pixel"]},
              "machine": {"hardware": "Some CPU, 2 cores", "load_average_before": [0.5]}}
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{README_START}\nold table\n{README_END}\nafter\n")
    assert write_readme_section([record], readme)
    text = readme.read_text()
    assert text.startswith(f"before\n{README_START}\n| recipe |") and text.endswith(f"{README_END}\nafter\n")
    assert "old table" not in text and "| `tiny` | 32/1/2 |" in text and "not reached" in text
    assert "| Some CPU, float32 |" in text
    (tmp_path / "other.md").write_text("no markers\n")
    assert not write_readme_section([record], tmp_path / "other.md")


def test_a_wsd_run_branched_at_a_kept_step_is_the_shorter_run_trained_from_scratch(data_root, tmp_path):
    import time

    from igptlib.bench_converge import ConvergenceCurve, prepare_branch
    from igptlib.train import checkpoint_steps

    values = smoke_config(data_root, steps=12, checkpoint_steps=[3]).to_dict()
    values["optim"].update(schedule="wsd", decay_fraction=0.5)
    parent_config = RunConfig.from_dict(values)
    curve = ConvergenceCurve(time.perf_counter(), kept=checkpoint_steps(parent_config))
    train(parent_config, tmp_path / "parent", callbacks=[curve])
    assert sorted(curve.kept_minutes) == ["3", "6"]  # the chosen step and the decay's start
    parent = {"name": "parent", "size": "xs", "overrides": [], "config": parent_config.to_dict(),
              "training": {"steps": 12}, "curve": curve.points, "checkpoint_minutes": curve.kept_minutes}

    with pytest.raises(FileNotFoundError, match="must have kept .*step-4.ckpt"):  # an 8-step run decays from 4
        prepare_branch(parent, tmp_path / "parent", 4, tmp_path / "branch")
    with pytest.raises(ConfigError, match="no run of at most 12 steps"):  # a 14-step run is longer than the parent
        prepare_branch(parent, tmp_path / "parent", 7, tmp_path / "branch")

    config, minutes = prepare_branch(parent, tmp_path / "parent", 3, tmp_path / "branch")
    assert config.train.steps == 6 and minutes == curve.kept_minutes["3"] > 0
    with pytest.raises(FileExistsError, match="already holds a run"):
        prepare_branch(parent, tmp_path / "parent", 3, tmp_path / "branch")
    train(config, tmp_path / "branch", resume=True)

    values["train"]["steps"] = 6
    train(RunConfig.from_dict(values), tmp_path / "straight")
    assert_same_weights(tmp_path / "straight", tmp_path / "branch")


class GradientNorms(L.Callback):
    """The norm of all gradients as the optimizer used them: after a step they stay until the next zero_grad."""

    def __init__(self):
        self.norms = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))


@pytest.mark.parametrize("grad_clip", [1e-3, 0.0])
def test_gradients_are_clipped_to_the_configured_norm(data_root, tmp_path, grad_clip):
    config = smoke_config(data_root, steps=3)
    config = config.replace(optim=config.optim.replace(grad_clip=grad_clip))
    norms = GradientNorms()
    train(config, tmp_path / "run", callbacks=[norms])
    if grad_clip:
        assert max(norms.norms) <= grad_clip * 1.001
    else:  # off: the same run's gradients are far larger, so the bound above says something
        assert min(norms.norms) > 10 * 1e-3


def test_a_run_folder_is_never_overwritten_and_resumes_only_its_own_model(data_root, tmp_path):
    config = smoke_config(data_root, steps=2, checkpoint_steps=[], test=True)
    metrics = train(config, tmp_path / "run")
    assert metrics["test"]["test/nats_per_pixel"] > 0
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(config, tmp_path / "run")
    other = RunConfig.from_dict({**config.to_dict(), "model": {**config.model.to_dict(), "n_layer": 2}})
    with pytest.raises(CheckpointError, match=r"another model: n_layer 1 \(here 2\)"):
        train(other, tmp_path / "run", resume=True)
    assert RunConfig.load_yaml(tmp_path / "run/config.yaml") == config  # the refused run changed nothing
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train(config, tmp_path / "empty", resume=True)


def test_finetuning_from_a_pretrained_run_adds_the_classifier(data_root, tmp_path):
    train(smoke_config(data_root, steps=2, checkpoint_steps=[]), tmp_path / "pre")
    args = build_parser().parse_args(["train", "--model", str(tmp_path / "pre/checkpoints/last.ckpt"),
                                      "--run-dir", str(tmp_path / "ft"), "--config", str(tmp_path / "pre/config.yaml"),
                                      "--steps", "2", "--val-every", "2"])
    config, run_dir = train_config(args)
    assert config.optim.finetune and config.train.init_from.endswith("last.ckpt")
    without_run_dir = build_parser().parse_args(["train", "--model", str(tmp_path / "pre/checkpoints/last.ckpt")])
    tuned, tuned_dir = train_config(without_run_dir)
    assert tuned_dir == tmp_path / "pre/finetune"  # where the notebooks and records look
    assert tuned.data == RunConfig.load_yaml(tmp_path / "pre/config.yaml").data  # what the model was trained on
    metrics = train(config, run_dir)
    assert 0.0 <= metrics["final"]["val/acc"] <= 1.0 and "val/clf_loss" in metrics["final"]


def stalled_finetuning(data_root, tmp_path, **train_fields) -> RunConfig:
    """Fine-tuning a 2-step run, validated every 2 of 20 steps, at a learning rate too small to change
    any prediction: validation accuracy stays where it starts."""
    train(smoke_config(data_root, steps=2, checkpoint_steps=[]), tmp_path / "pre")
    config = smoke_config(data_root, steps=20, val_every=2, checkpoint_steps=[], **train_fields)
    return config.replace(optim=config.optim.replace(finetune=True, lr=1e-12).to_dict(),
                          train=config.train.replace(init_from=str(tmp_path / "pre/checkpoints/last.ckpt")).to_dict())


def test_finetuning_keeps_its_best_accuracy_and_stops_early_when_validation_stalls(data_root, tmp_path):
    config = stalled_finetuning(data_root, tmp_path, early_stop=2)
    metrics = train(config, tmp_path / "ft")
    # Validations at steps 2 (the best), 4 and 6 (no better: the patience of 2 is spent).
    assert metrics["stopped_early"] and metrics["global_step"] == 6
    assert 0.0 <= metrics["best_val_acc"] <= 1.0 and "best_val_nats_per_pixel" not in metrics
    best = torch.load(tmp_path / "ft/checkpoints/best.ckpt", weights_only=True)
    assert any(key.startswith("ModelCheckpoint") and state["monitor"] == "val/acc" for key, state in best["callbacks"].items())
    assert torch.load(tmp_path / "ft/checkpoints/last.ckpt", weights_only=True)["global_step"] == 6
    # Resumed, it stops at its next validation: the early stop's patience is kept in the checkpoint.
    assert train(config, tmp_path / "ft", resume=True)["global_step"] == 8


def test_early_stopping_counts_only_the_validations_from_its_first_step(data_root, tmp_path):
    config = stalled_finetuning(data_root, tmp_path, early_stop=2, early_stop_from=10)
    metrics = train(config, tmp_path / "ft")
    # Validations at steps 2 to 8 do not count; 10 is the first (the best), 12 and 14 no better.
    assert metrics["stopped_early"] and metrics["global_step"] == 14


def test_two_process_ddp_on_the_cpu_trains_a_few_steps(data_root, tmp_path):
    command = [
        sys.executable, "-m", "igptlib.cli", "train", "--size", "xs", "--root", str(data_root), "--clusters", "8",
        "--limit-train", "32", "--limit-val", "8", "--limit-test", "8", "--batch-size", "4", "--steps", "3",
        "--val-every", "3", "--val-batches", "1", "--no-test", "--no-progress-bar", "--precision", "32-true",
        "--device", "cpu", "--devices", "2", "--strategy", "ddp", "--run-dir", str(tmp_path / "ddp"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MEMBER: 2/2" in result.stderr + result.stdout  # the second process joined
    metrics = json.loads((tmp_path / "ddp/metrics.json").read_text())
    assert metrics["global_step"] == 3
    assert (tmp_path / "ddp/checkpoints/last.ckpt").exists()


MEMORY_PROBE = """
import torch
from igptlib.train import freed_memory_reused

def resident_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))

def allocate_and_free():
    block = torch.ones(16 << 20)  # 64 MiB, every page written
    del block

base = resident_mib()
with freed_memory_reused() as reusing:
    allocate_and_free()
    inside = resident_mib() - base
after = resident_mib() - base
allocate_and_free()
print(reusing, inside, after, resident_mib() - base)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident memory from Linux's /proc")
def test_freed_memory_is_kept_for_reuse_while_training_and_handed_back_after():
    # A fresh process: glibc's settings are process-wide. The ladder trains, then evaluates at a
    # larger batch in the same process, which must not go on with a heap that never shrinks.
    found = subprocess.run([sys.executable, "-c", MEMORY_PROBE], capture_output=True, text=True, check=True).stdout.split()
    if found[0] == "False":
        pytest.skip("the C library is not glibc: nothing to keep or hand back")
    inside, after, later = map(float, found[1:])
    assert inside > 48, f"inside, the freed 64 MiB block stays for reuse (resident +{inside:.0f} MiB)"
    assert after < 16, f"on leaving, it is handed back (resident +{after:.0f} MiB)"
    assert later < 16, f"and a large block freed afterwards goes back at once (resident +{later:.0f} MiB)"

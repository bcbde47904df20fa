"""`igpt bench classify`: time to quality for classification, from random initialisation to a tested classifier.

A recipe is two training stages and a test:

    pre-train   the generative objective alone (skipped with --pretrain-steps 0: the control trained on labels alone)
    fine-tune   L_GEN + L_CLF from the pre-trained weights; best.ckpt is the best validation accuracy
    test        best.ckpt's test accuracy and kappa: the test split is read once, at the very end

and, with --probe, linear probes on the pre-trained model's layers (their own minutes, off the classifier's clock).
At every validation the record gets a point of the curve: the wall minutes since the recipe began (validation
included), the stage, the step, the validation score, and the process's CPU minutes, which a busy machine inflates
far less than wall minutes. The clock is kept in each checkpoint, so a run stopped by its budget and resumed goes
on counting from the checkpoint it resumes from (the time spent after that checkpoint is done again, and counted
again). `--cnn` measures the other control: a small convolutional network on the raw images.

A benchmark, not a test: it writes report/bench/classify-<name>.json.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import lightning as L
import torch

from igptlib.config import RunConfig, apply_overrides, read_json, run_config, write_json

VAL_IMAGES = 2_000  # per fine-tuning validation: enough to tell 99.0% from 99.3% by more than one image in a thousand


class StageClock(L.Callback):
    """The recipe's wall and CPU minutes at every validation of one stage, kept in its checkpoints.

    offset: (wall, cpu) minutes of the stages before this one. score: the logged validation metric.
    """

    def __init__(self, stage: str, offset: tuple[float, float], score: str):
        self.stage, self.offset, self.score = stage, offset, score
        self.done = (0.0, 0.0)  # this stage's minutes in earlier processes, up to the checkpoint resumed from
        self.points: list[dict] = []
        self._restart()

    def _restart(self):
        self.wall_started, self.cpu_started = time.perf_counter(), time.process_time()

    def stage_minutes(self) -> tuple[float, float]:
        return (self.done[0] + (time.perf_counter() - self.wall_started) / 60,
                self.done[1] + (time.process_time() - self.cpu_started) / 60)

    def minutes(self) -> tuple[float, float]:
        wall, cpu = self.stage_minutes()
        return self.offset[0] + wall, self.offset[1] + cpu

    def state_dict(self) -> dict:
        return {"minutes": list(self.stage_minutes()), "points": self.points}

    def load_state_dict(self, state: dict) -> None:
        self.done, self.points = tuple(state["minutes"]), list(state["points"])
        self._restart()

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        wall, cpu = self.minutes()
        # A run resumed from a checkpoint saved before its last validation validates that step again.
        self.points = [p for p in self.points if p["step"] < trainer.global_step]
        self.points.append({"minutes": round(wall, 3), "cpu_minutes": round(cpu, 3), "stage": self.stage,
                            "step": trainer.global_step, self.score: float(trainer.callback_metrics[f"val/{self.score[4:]}"]),
                            "load_average": os.getloadavg()[0]})


def machine() -> dict:
    """What the minutes depend on: the hardware, torch's threads, the load, and this process's priority
    (a benchmark given priority over other work on a shared machine says so)."""
    from igptlib.records import describe_hardware

    return {"hardware": describe_hardware(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "nice": os.nice(0), "autogroup_nice": autogroup_nice(), "load_average_before": os.getloadavg()}


def autogroup_nice() -> int | None:
    """The nice value of this process's Linux scheduler autogroup (None where there is none). Where
    autogroups are on, the CPU is shared between sessions before a process's own nice counts, so a
    benchmark is given priority by its autogroup's nice, which os.nice(0) does not show."""
    try:
        text = Path("/proc/self/autogroup").read_text()  # "/autogroup-24 nice -10"
    except OSError:
        return None
    found = re.search(r"nice (-?\d+)", text)
    return int(found.group(1)) if found else None


def stage_configs(size: str, pretrain_steps: int, finetune_steps: int, overrides: list[str],
                  pretrain_overrides: list[str], finetune_overrides: list[str]) -> tuple[RunConfig | None, RunConfig]:
    """The two stages' configs: `size`'s preset changed by `overrides` (both stages), then each stage's own."""
    base = apply_overrides(run_config(size, "mnist").to_dict(), overrides)
    base["train"].update(test=False, checkpoint_steps=[])

    def stage(steps: int, changes: list[str], **fixed) -> RunConfig:
        values = apply_overrides({k: dict(v) for k, v in base.items()}, changes)
        for section, fields in fixed.items():
            values[section].update(fields)
        values["train"]["steps"] = steps
        return RunConfig.from_dict(values, where="--set")

    pretrain = stage(pretrain_steps, pretrain_overrides, optim={"finetune": False}) if pretrain_steps else None
    finetune = stage(finetune_steps, finetune_overrides, optim={"finetune": True})
    batches = -(-VAL_IMAGES // finetune.data.batch_size)
    finetune = finetune.replace(train=finetune.train.replace(val_batches=batches).to_dict())
    if pretrain is not None and (pretrain.data.n_px, pretrain.data.clusters) != (finetune.data.n_px, finetune.data.clusters):
        raise ValueError("the two stages must read the same images: set data.n_px and data.clusters with --set, not per stage")
    return pretrain, finetune


def _train_stage(name: str, config: RunConfig, run_dir: Path, offset: tuple[float, float], deadline: float | None,
                 state: dict, state_path: Path) -> bool:
    """Train one stage (resuming it if it began before); True once it is finished and in `state`."""
    from igptlib.train import train

    if name in state["stages"]:
        return True
    score = "val_acc" if config.optim.finetune else "val_nats_per_pixel"
    clock = StageClock(name, offset, score)
    budget = None if deadline is None else deadline - time.perf_counter()
    if budget is not None and budget <= 0:
        return False
    metrics = train(config, run_dir, resume=(run_dir / "config.yaml").exists(), callbacks=[clock], budget_seconds=budget)
    if metrics["stopped_by_budget"]:
        print(f"{name}: stopped by the budget at step {metrics['global_step']}; run the same command again to go on", flush=True)
        return False
    wall, cpu = clock.stage_minutes()
    state["stages"][name] = {"minutes": round(wall, 3), "cpu_minutes": round(cpu, 3), "steps": metrics["global_step"],
                             "precision": metrics["precision"], "parameters": metrics["parameters"], "curve": clock.points}
    write_json(state_path, state)
    return True


def _offset(state: dict, *stages: str) -> tuple[float, float]:
    done = [state["stages"][s] for s in stages if s in state["stages"]]
    return sum(s["minutes"] for s in done), sum(s["cpu_minutes"] for s in done)


def _evaluate(checkpoint: Path, config: RunConfig, **options) -> tuple[dict, float]:
    """evaluate_model on the checkpoint's model and the stage's data, in bfloat16 autocast; (results, minutes)."""
    from igptlib.data import PixelDataModule
    from igptlib.evaluate import evaluate_model
    from igptlib.lightning_module import load_checkpoint

    started = time.perf_counter()
    data = PixelDataModule(config.data)
    results = evaluate_model(load_checkpoint(checkpoint).model, data, completions=0, precision="bf16", **options)
    return results, (time.perf_counter() - started) / 60


def classify(name: str, run_dir: Path, size: str, pretrain_steps: int, finetune_steps: int, overrides: list[str],
             pretrain_overrides: list[str], finetune_overrides: list[str], probe: bool,
             budget_minutes: float | None) -> dict | None:
    """Run every stage not yet done, within the budget; the record once the classifier is tested, else None."""
    pretrain, finetune = stage_configs(size, pretrain_steps, finetune_steps, overrides, pretrain_overrides, finetune_overrides)
    deadline = None if budget_minutes is None else time.perf_counter() + budget_minutes * 60
    state_path = run_dir / "bench-state.json"
    settings = {"size": size, "pretrain": None if pretrain is None else pretrain.to_dict(), "finetune": finetune.to_dict()}
    state = read_json(state_path) if state_path.exists() else {"settings": settings, "stages": {}}
    if state["settings"] != settings:
        raise ValueError(f"{run_dir} holds a benchmark of other settings ({state_path}); choose another --run-dir or --name")
    state.setdefault("machine", machine())
    write_json(state_path, state)

    if pretrain is not None:
        if not _train_stage("pretrain", pretrain, run_dir / "pretrain", (0.0, 0.0), deadline, state, state_path):
            return None
        finetune = finetune.replace(train=finetune.train.replace(
            init_from=str(run_dir / "pretrain" / "checkpoints" / "last.ckpt")).to_dict())
        if probe and "probe" not in state:
            results, minutes = _evaluate(run_dir / "pretrain" / "checkpoints" / "last.ckpt", pretrain, classification=False)
            state["probe"] = {"minutes": round(minutes, 3), "probes": results["probes"], "likelihood": results.get("likelihood")}
            write_json(state_path, state)
    if not _train_stage("finetune", finetune, run_dir / "finetune", _offset(state, "pretrain"), deadline, state, state_path):
        return None
    if "test" not in state:
        # best.ckpt is the best validation accuracy; a fine-tuning too short to validate has only its last weights.
        checkpoints = run_dir / "finetune" / "checkpoints"
        tested = checkpoints / "best.ckpt" if (checkpoints / "best.ckpt").exists() else checkpoints / "last.ckpt"
        results, minutes = _evaluate(tested, finetune, probes=False)
        state["test"] = {**results["classification"], "images": results["test_images"], "minutes": round(minutes, 2),
                         "checkpoint": tested.name}
        state["machine"]["load_average_after"] = os.getloadavg()
        write_json(state_path, state)
    return build_record(name, state)


def build_record(name: str, state: dict) -> dict:
    """The benchmark's JSON record from the finished stages and the test classification."""
    stages = state["stages"]
    wall, cpu = _offset(state, "pretrain", "finetune")
    clf = state["test"]
    record = {
        "name": name, "kind": "transformer", "settings": state["settings"], "machine": state["machine"],
        "stages": {s: {k: v for k, v in stage.items() if k != "curve"} for s, stage in stages.items()},
        "curve": [point for s in ("pretrain", "finetune") if s in stages for point in stages[s]["curve"]],
        "training": {"minutes": round(wall, 2), "cpu_minutes": round(cpu, 2)},
        "test": {key: clf[key] for key in ("accuracy", "kappa", "images", "confusion_matrix", "minutes", "checkpoint") if key in clf},
    }
    if "probe" in state:
        probes = state["probe"]["probes"]
        record["probe"] = {"minutes": round(_offset(state, "pretrain")[0] + state["probe"]["minutes"], 2),
                           "best_layer": probes["best_layer"], "best_test_accuracy": probes["best_test_accuracy"],
                           "inverse_l2": probes["inverse_l2"], "train_examples": probes["train_examples"],
                           "test_likelihood": state["probe"]["likelihood"]}
    return record


# -- the convolutional control -----------------------------------------------------------------------


def small_cnn(classes: int = 10) -> torch.nn.Module:
    """Two 3x3 convolutions, a max-pool and two dense layers with dropout: the classic small MNIST network."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Flatten(), nn.Linear(64 * 12 * 12, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, classes),
    )


def cnn_control(name: str, epochs: int, batch_size: int = 128, lr: float = 1e-3, seed: int = 0) -> dict:
    """The small CNN trained on the same training split with Adam and a cosine schedule, validated
    after every epoch on the same validation split; the best epoch's weights tested once."""
    import copy

    from igptlib.config import DataConfig
    from igptlib.data import training_split
    from igptlib.datasets import load_split
    from igptlib.metrics import classification_metrics

    torch.manual_seed(seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    machine_before = machine()
    train_images, train_labels, val_images, val_labels = training_split(DataConfig(seed=seed))
    test_images, test_labels = load_split("mnist", "data", train=False)
    model = small_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(train_images) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)

    def predict(images):
        model.eval()
        with torch.inference_mode():
            return torch.cat([model(chunk.float() / 255).argmax(-1) for chunk in images.split(1000)])

    curve, best = [], (-1.0, None)
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in torch.randperm(len(train_images)).split(batch_size):
            loss = torch.nn.functional.cross_entropy(model(train_images[batch].float() / 255), train_labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy = float((predict(val_images) == val_labels).float().mean())
        curve.append({"minutes": round((time.perf_counter() - started) / 60, 3),
                      "cpu_minutes": round((time.process_time() - cpu_started) / 60, 3),
                      "stage": "train", "step": epoch, "val_acc": accuracy, "load_average": os.getloadavg()[0]})
        print(f"{name}: epoch {epoch}/{epochs}, validation accuracy {accuracy:.4f}", flush=True)
        if accuracy > best[0]:
            best = (accuracy, copy.deepcopy(model.state_dict()))
    minutes, cpu_minutes = (time.perf_counter() - started) / 60, (time.process_time() - cpu_started) / 60
    model.load_state_dict(best[1])
    tested = time.perf_counter()
    clf = classification_metrics(test_labels.numpy(), predict(test_images).numpy())
    return {
        "name": name, "kind": "cnn",
        "settings": {"network": "conv32-conv64-maxpool-dense128, dropout 0.25/0.5", "epochs": epochs,
                     "batch_size": batch_size, "lr": lr, "schedule": "one-cycle", "augment": [], "n_px": 28, "seed": seed,
                     "parameters": sum(p.numel() for p in model.parameters())},
        "machine": {**machine_before, "load_average_after": os.getloadavg()},
        "curve": curve,
        "training": {"minutes": round(minutes, 2), "cpu_minutes": round(cpu_minutes, 2)},
        "test": {"accuracy": clf["accuracy"], "kappa": clf["kappa"], "images": len(test_labels),
                 "confusion_matrix": clf["confusion_matrix"], "minutes": round((time.perf_counter() - tested) / 60, 2)},
    }


def write_record(record: dict, out: Path) -> Path:
    return write_json(Path(out) / f"classify-{record['name']}.json", record)

"""Run records: the small files of a run that the report is built from, committed under report/runs/.

Run folders (runs/<name>/) hold checkpoints and are not committed. A record keeps what the report
needs from one, in the same layout, so that a fresh clone rebuilds the same report:

    report/runs/<name>/
        record.json                  where the record came from (the run folder) and the hardware
        commands.txt                 the igpt commands that wrote into the run folder, one a line
        config.yaml  metrics.json  evaluation.json
        machines.json                per training process the step it began at, its hardware and precision
        evaluation-step-<N>.json     evaluations of earlier named checkpoints (an experiment's evaluate_steps)
        robustness.json              inverted and rotated digits, where 07_evaluation measured them
        timing.json                  per training process its first and last logged time (training
                                     minutes), and the time each logged step was reached
        logs/csv/version_*/metrics.csv   the logged curves
        figures/*.png                the evaluation's figures
        notebooks/*.ipynb            the course notebooks as papermill executed them (outputs kept), for
                                     a reader who wants to see the run without running it
        finetune/...                 the same files of the fine-tuning run

`igpt record --model RUN_DIR [--name NAME]` writes one; `igpt sweep` and `igpt report` record the run folders
they find. A shipped model's record is report/runs/shipped-<model>/: `igpt evaluate --model <model>`
writes its evaluation.json and figures there; its training files are there only if they were kept.
"""
from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shutil
from pathlib import Path

from igptlib.config import check_name, read_json

RECORDS = Path("report/runs")
SHIPPED_PREFIX = "shipped-"
FILES = ("config.yaml", "metrics.json", "evaluation.json", "commands.txt", "machines.json", "robustness.json")
FIGURES = ("completions.png", "linear_probes.png", "confusion_matrix.png", "actual_vs_predicted.png", "predictions.png")
STAGES = ("", "finetune")  # pre-training in the folder itself, fine-tuning in finetune/


def shipped_record(model: str, records: str | Path = RECORDS) -> Path:
    """The record folder of a shipped model."""
    return Path(records) / f"{SHIPPED_PREFIX}{model}"


def made_by_finetuning(notes: dict) -> bool:
    """Whether a shipped model is a fine-tuned classifier: its notes name the checkpoint it was
    exported from, and fine-tuning runs live in a run folder's finetune/ folder."""
    return "finetune" in Path(str(notes.get("checkpoint", ""))).parts


def describe_hardware() -> str:
    """This machine in one line: the GPU if torch uses one, else the CPU and the threads torch uses."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # platform.processor() is often empty on Linux
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, no GPU"


def machine_spans(machines: list[dict], last_step: int) -> list[dict]:
    """Which steps (counted from 1) each machine trained, from machines.json (one entry a process:
    the step it began at, its hardware and precision) and the run's last step: a process whose
    steps the next one trained again (it stopped before saving a checkpoint) has none, and
    consecutive processes on the same machine in the same precision make one span."""
    spans: list[dict] = []
    for entry, following in zip(machines, [*machines[1:], None]):
        end = last_step if following is None else following["from_step"]
        if end <= entry["from_step"]:
            continue
        if spans and (spans[-1]["hardware"], spans[-1]["precision"]) == (entry["hardware"], entry["precision"]):
            spans[-1]["last_step"] = end
        else:
            spans.append({"hardware": entry["hardware"], "precision": entry["precision"],
                          "first_step": entry["from_step"] + 1, "last_step": end})
    return spans


def _logged_events(run_dir: str | Path) -> list[list]:
    """Each training process's logged scalars as [(step, wall time), ...] (one TensorBoard version
    folder per process: a resumed run has several)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    processes = []
    versions = sorted((Path(run_dir) / "logs" / "tensorboard").glob("version_*"), key=lambda p: int(p.name.split("_")[-1]))
    for version in versions:
        events = EventAccumulator(str(version), size_guidance={"scalars": 0})
        events.Reload()
        logged = [(event.step, event.wall_time) for tag in events.Tags()["scalars"] for event in events.Scalars(tag)]
        if logged:
            processes.append(logged)
    return processes


def _spans(processes: list[list]) -> list[list[float]]:
    return [[min(t for _, t in logged), max(t for _, t in logged)] for logged in processes]


def _first_times(processes: list[list]) -> list[list[float]]:
    """[step, wall time] of each logged step, the first time the run reached it, in step order."""
    first: dict[int, float] = {}
    for logged in processes:
        for step, wall_time in logged:
            first[step] = min(wall_time, first.get(step, wall_time))
    return [[step, first[step]] for step in sorted(first)]


def timing_from_logs(run_dir: str | Path) -> dict:
    """What timing.json keeps of a run folder's TensorBoard logs, read once."""
    processes = _logged_events(run_dir)
    return {"processes": _spans(processes), "step_times": _first_times(processes)}


def _timing(folder: Path) -> dict | None:
    """A record's timing.json, or the same read from a run folder's TensorBoard logs; None where neither exists."""
    if (folder / "timing.json").exists():
        return read_json(folder / "timing.json", expected=dict)
    if (folder / "logs" / "tensorboard").is_dir():
        return timing_from_logs(folder)
    return None


def minutes_at_step(folder: str | Path, step: int) -> float | None:
    """Training wall minutes until the run first logged `step` or a later one (earlier processes'
    whole spans included); None where the timing or that step was not kept."""
    timing = _timing(Path(folder))
    # Lightning logs what happens during optimizer step n (counting from 1) under step n - 1.
    reached = [t for logged, t in (timing or {}).get("step_times", []) if logged + 1 >= step]
    if not reached:
        return None
    moment = min(reached)
    return sum(min(end, moment) - start for start, end in timing["processes"] if start <= moment) / 60


def training_seconds(folder: str | Path) -> float | None:
    """Wall time of a run's training, resumptions included: each process's first to last logged
    time, summed. Read from a record's timing.json, else from a run folder's TensorBoard logs;
    None where neither exists."""
    timing = _timing(Path(folder))
    return None if timing is None else sum(end - start for start, end in timing["processes"])


def _copy_stage(source: Path, target: Path) -> None:
    """The small files of one stage (pre-training or fine-tuning) of a run folder."""
    target.mkdir(parents=True, exist_ok=True)  # the stage "" is the staging folder itself
    for name in FILES:
        if (source / name).exists():
            shutil.copyfile(source / name, target / name)
    for evaluation in sorted(source.glob("evaluation-step-*.json")):
        shutil.copyfile(evaluation, target / evaluation.name)
    for csv in sorted(source.glob("logs/csv/version_*/metrics.csv")):
        destination = target / csv.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(csv, destination)
    for notebook in sorted(source.glob("notebooks/*.ipynb")):
        (target / "notebooks").mkdir(exist_ok=True)
        shutil.copyfile(notebook, target / "notebooks" / notebook.name)
    for name in FIGURES:
        if (source / "figures" / name).exists():
            (target / "figures").mkdir(exist_ok=True)
            shutil.copyfile(source / "figures" / name, target / "figures" / name)
    if (source / "logs" / "tensorboard").is_dir():
        (target / "timing.json").write_text(json.dumps(timing_from_logs(source), indent=2) + "\n")


def record_run(run_dir: str | Path, name: str | None = None, records: str | Path = RECORDS) -> Path:
    """Copy a finished run folder's small files into records/<name> (default: the folder's name),
    replacing an older record of that name whole, so that nothing stale survives. Returns the record.

    The name is a plain name (config.check_name), so the record is a folder of `records` itself; a
    folder there that is not a record (no record.json) is never replaced.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "metrics.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a finished run folder (expected config.yaml and metrics.json)")
    name = check_name(run_dir.resolve().name if name is None else name, what="record name",
                      becomes=f"{Path(records)}/<name>")
    records = Path(records)
    record = records / name
    if record.is_symlink() or (record.exists() and not (record / "record.json").is_file()):
        raise FileExistsError(f"{record} exists and is not a run record (no record.json in it); choose another --name")
    if (run_dir / "record.json").exists():  # recorded again, it would lose what only a record keeps (timing.json)
        raise ValueError(f"{run_dir}: a run record, not a run folder; expected a folder that igpt train wrote")
    metrics = read_json(run_dir / "metrics.json", expected=dict)
    records.mkdir(parents=True, exist_ok=True)
    for stale in records.glob(f"{name}.*.partial"):  # left by a copy that was killed
        if re.fullmatch(re.escape(name) + r"\.[0-9a-f]{8}\.partial", stale.name) and stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)
    # A fresh folder of a random name: an interrupted copy never replaces a good record, and no
    # folder or link that was there before is written into.
    staging = records / f"{name}.{secrets.token_hex(4)}.partial"
    staging.mkdir()  # fails on anything already there, a link included
    try:
        for stage in STAGES:
            if (run_dir / stage / "metrics.json").exists():
                _copy_stage(run_dir / stage, staging / stage)
        source = {"source": str(run_dir), "hardware": metrics.get("hardware")}
        (staging / "record.json").write_text(json.dumps(source, indent=2) + "\n")
        if record.exists():
            aside = records / f"{name}.{secrets.token_hex(4)}.old"
            record.replace(aside)  # removed once the new record is in place
            staging.replace(record)
            shutil.rmtree(aside)
        else:
            staging.replace(record)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return record


def note_command(run_dir: str | Path, command: list[str] | str | None) -> None:
    """Append an igpt command line to a run folder's commands.txt (the record's provenance)."""
    if not command:
        return
    import shlex

    line = command if isinstance(command, str) else shlex.join(command)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with (Path(run_dir) / "commands.txt").open("a") as file:
        file.write(line + "\n")

"""The CPU ladder on a tiny plan: it stops at a checkpoint when its budget runs out, goes on from
there, evaluates every named checkpoint, fine-tunes, records, and skips whatever is done."""
import json
import shutil
from pathlib import Path

import torch

from igptlib.comparison import (CURVES, ablation, ablation_table, checkpoints, conclusions, curve_figure, ladder as ladder_runs,
                                objective_table, size_table, summary)
from igptlib.config import RunConfig
from igptlib.device import bf16_faster_on_cpu
from igptlib.ladder import ladder, stages
from igptlib.records import record_run


def tiny_plan(root: Path) -> dict:
    overrides = [f"data.root={root}", "data.limit_train=64", "data.limit_val=16", "data.limit_test=16",
                 "data.batch_size=8", "train.val_every=2", "train.val_batches=1", "train.save_every=2",
                 "train.progress_bar=false", "train.log_every=1", "train.precision=32-true", "train.accelerator=cpu", "train.devices=1",
                 "model.n_embd=32", "model.n_layer=1", "model.n_head=1"]
    return dict(sizes=("xs",), twin_size="xs", steps=(2, 4), overrides=overrides, finetune_steps=2)


def test_the_ladder_stops_on_budget_resumes_and_finishes_every_stage(mnist_root, tmp_path, capsys):
    root = tmp_path / "data"
    root.mkdir()
    (root / "MNIST").symlink_to(Path(mnist_root) / "MNIST", target_is_directory=True)
    runs, records = tmp_path / "runs", tmp_path / "records"
    plan = tiny_plan(root)

    assert not ladder(runs, budget_minutes=0.001, records=records, **plan)  # the first stage stops after one step
    assert torch.load(runs / "ladder-xs/checkpoints/last.ckpt", weights_only=True)["global_step"] == 1
    assert "stopped at a checkpoint" in capsys.readouterr().out

    # Recorded after each stage it finishes: here pre-training, with no time left for an evaluation.
    assert not ladder(runs, budget_minutes=60, reserve_minutes=61, records=records, **plan)
    assert json.loads((records / "ladder-xs/metrics.json").read_text())["global_step"] == 4
    assert not list((records / "ladder-xs").glob("evaluation*.json"))

    # An evaluation given a moment of the budget stops between batches, to go on next time.
    assert not ladder(runs, budget_minutes=1, reserve_minutes=1 - 0.01 / 60, records=records, **plan)
    assert "evaluate ladder-xs at step 2 stopped keeping the passes over the splits it finished" in capsys.readouterr().out
    assert not (runs / "ladder-xs" / "evaluation-step-2.json").exists()

    assert ladder(runs, records=records, **plan)
    for name in ("ladder-xs", "ladder-xs-noaug", "ladder-xs-rotate"):
        folder = runs / name
        assert json.loads((folder / "metrics.json").read_text())["global_step"] == 4
        early = json.loads((folder / "evaluation-step-2.json").read_text())
        final = json.loads((folder / "evaluation.json").read_text())
        assert early["checkpoint"].endswith("step-2.ckpt") and "completion" not in early
        assert final["likelihood"]["nats_per_pixel"] > 0 and final["completion"]["images"] == 8
        assert set(final["probes"]["test_accuracy"]) == {"0", "1"}  # the embeddings and the one block
        assert final["precision"] == ("bf16" if bf16_faster_on_cpu() else "32")  # this CPU's faster one
        tuned = json.loads((folder / "finetune/evaluation.json").read_text())
        assert 0 <= tuned["classification"]["accuracy"] <= 1
        assert (records / name / "finetune" / "evaluation.json").exists()
        assert (records / name / "evaluation-step-2.json").exists()
    # BERT: the same size, data and steps; probes and fine-tuning, but no likelihood and no completion.
    bert = runs / "ladder-xs-bert"
    saved, ar = (RunConfig.load_yaml(runs / name / "config.yaml") for name in ("ladder-xs-bert", "ladder-xs"))
    assert saved.model.objective == "bert" and saved.replace(model=ar.model.to_dict()) == ar
    final = json.loads((bert / "evaluation.json").read_text())
    assert final["objective"] == "bert" and "likelihood" not in final and "completion" not in final
    assert set(final["probes"]["test_accuracy"]) == {"0", "1"}
    assert 0 <= json.loads((bert / "finetune/evaluation.json").read_text())["classification"]["accuracy"] <= 1
    rotate = RunConfig.load_yaml(runs / "ladder-xs-rotate" / "config.yaml")
    assert rotate.data.augment == [*ar.data.augment, "rotate"] and rotate.replace(data=ar.data.to_dict()) == ar
    names = [stage.name for stage in stages(runs, **plan)]
    assert names[0] == "pretrain ladder-xs" and names[-1] == "classify ladder-xs-rotate" and len(names) == 20

    capsys.readouterr()
    assert ladder(runs, records=records, **plan)  # nothing left to do
    assert "every stage is done" in capsys.readouterr().out

    # On a fresh machine, without the run folders, what the records show finished is not trained again;
    # a run whose record stops short of its classification starts again.
    shutil.rmtree(records / "ladder-xs-rotate" / "finetune")
    fresh = tmp_path / "fresh-runs"
    assert not ladder(fresh, budget_minutes=0.001, records=records, **plan)
    assert "so skipped: ladder-xs, ladder-xs-bert, ladder-xs-noaug" in capsys.readouterr().out
    assert [folder.name for folder in fresh.iterdir()] == ["ladder-xs-rotate"]
    record_run(runs / "ladder-xs-rotate", records=records)

    # The report's model comparison, from the records alone (the tiny run stands in for each size).
    section = tmp_path / "section"
    for source, names in (("ladder-xs", ("ladder-cpu-s", "ladder-cpu-m", "ladder-cpu-l")),
                          ("ladder-xs-noaug", ("ladder-cpu-s-noaug",)), ("ladder-xs-bert", ("ladder-cpu-s-bert",)),
                          ("ladder-xs-rotate", ("ladder-cpu-s-rotate",))):
        for name in names:
            shutil.copytree(records / source, section / "runs" / name)
    minutes = [row["minutes"] for row in checkpoints(section / "runs/ladder-cpu-s")]
    assert len(minutes) == 2 and 0 < minutes[0] <= minutes[1]  # timed from the records' step times
    # The machine's load, logged beside the curves while training (train.MachineLoad), goes beside the minutes.
    loads = [row["load"] for row in checkpoints(section / "runs/ladder-cpu-s")]
    assert all(load is not None and load >= 0 for load in loads)
    runs_by_size = ladder_runs(section / "runs")
    lines = size_table(runs_by_size).splitlines()
    assert sum(line.startswith(("| S (", "| M (", "| L (")) for line in lines) == 6  # 3 sizes x 2 named steps
    first = next(line for line in lines if line.startswith("| S (")).split(" | ")
    assert first[3:5] == [f"{minutes[0]:.1f}", f"{loads[0]:.1f}"]
    for figure, caption, stage, metrics in CURVES:  # the seed's figures 6.7 to 6.11, from the records' logs
        drawn = curve_figure(runs_by_size, stage, metrics, title=caption)
        assert drawn is not None and len(drawn.axes[0].lines) == len(metrics) * 3, figure
    text = "\n".join(conclusions(runs_by_size))
    assert "Here L leads on 0 of 3 measures: this differs from" in text  # equal numbers: the first size listed, S, leads
    text = ablation_table(ablation(section / "runs"))
    assert "| with augmentation (crop, flip) |" in text and "| without augmentation |" in text
    assert "| with augmentation (crop, flip, rotate) |" in text
    text = objective_table(runs_by_size["ladder-cpu-s"], summary(section / "runs/ladder-cpu-s-bert"))
    assert "| BERT (mask 0.15) |" in text and "probe, layer 1" in text
    assert ladder_runs(tmp_path / "no-records") == {}

    # A size part way through is shown, but not compared: its last evaluation is not at the others' step.
    (section / "runs/ladder-cpu-l/evaluation.json").unlink()
    shutil.rmtree(section / "runs/ladder-cpu-l/finetune")
    text = "\n".join(conclusions(ladder_runs(section / "runs")))
    assert "L is not finished (evaluated to step 2, not yet fine-tuned): it joins these comparisons once it is." in text
    assert "Only S and M finished so far: no conclusion about size yet." in text and "Here L leads" not in text
    assert "against M " in text and "against L " not in text

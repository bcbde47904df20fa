"""The report's model comparison (the CPU ladder's S, M and L, and S's twins), read from the committed records alone."""
import shutil
from pathlib import Path

from igptlib.comparison import (CURVES, ablation, ablation_table, checkpoints, conclusions, curve_figure, ladder as ladder_runs,
                                objective_table, size_table, summary)

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "report" / "runs"


def test_the_comparison_reads_the_ladder_records(tmp_path):
    minutes = [row["minutes"] for row in checkpoints(RECORDS / "ladder-cpu-s")]
    assert len(minutes) == 3 and 0 < minutes[0] < minutes[1] < minutes[2]  # one row per named step, timed from the logs
    runs = ladder_runs(RECORDS)
    assert list(runs) == ["ladder-cpu-s", "ladder-cpu-m", "ladder-cpu-l"]
    lines = size_table(runs).splitlines()
    assert sum(line.startswith(("| S (", "| M (", "| L (")) for line in lines) == 9  # 3 sizes x 3 named steps
    for figure, caption, stage, metrics in CURVES:  # the seed's figures 6.7 to 6.11, from the records' logs
        drawn = curve_figure(runs, stage, metrics, title=caption)
        assert drawn is not None and len(drawn.axes[0].lines) == len(metrics) * 3, figure
    assert "The seed concluded that the large model is best" in "\n".join(conclusions(runs))
    text = ablation_table(ablation(RECORDS))
    assert "| with augmentation (crop) |" in text and "| without augmentation |" in text
    assert "| with augmentation (crop, rotate) |" in text
    text = objective_table(runs["ladder-cpu-s"], summary(RECORDS / "ladder-cpu-s-bert"))
    assert "| BERT (mask 0.15) |" in text and "probe, layer 3" in text
    assert ladder_runs(tmp_path / "no-records") == {}

    # A size part way through is shown, but not compared: its last evaluation is not at the others' step.
    for name in runs:
        shutil.copytree(RECORDS / name, tmp_path / name)
    (tmp_path / "ladder-cpu-l" / "evaluation.json").unlink()
    shutil.rmtree(tmp_path / "ladder-cpu-l" / "finetune")
    text = "\n".join(conclusions(ladder_runs(tmp_path)))
    assert "L is not finished (evaluated to step 1310, not yet fine-tuned): it joins these comparisons once it is." in text
    assert "Only S and M finished so far: no conclusion about size yet." in text and "against L " not in text

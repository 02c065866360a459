"""select-lr: each loss's learning rate chosen on dev, from real `score asr` summaries and train dirs."""

import json

import pytest

from speech_lpo.cli import main as cli_main
from speech_lpo.results import write_results
from speech_lpo.select_lr import select, selection_table
from speech_lpo.summaries import load_summaries
from tests.test_results import system, training_run

# final-epoch dev word-drop rates per (loss, rate): LPO best at 2e-4; DPO's two rates tie (the same
# hypotheses, below)
DROP = {("lpo", 5e-5): 0.25, ("lpo", 2e-4): 0.10, ("dpo", 5e-5): 0.20, ("dpo", 2e-4): 0.20}


@pytest.fixture
def grid(tmp_path):
    runs, scores = [], [system(tmp_path, "sft", 0.30, {"method": "sft", "test_set": "dev"})]
    for (loss, lr), drop in DROP.items():
        loss_settings = {"loss_type": loss, "r2": 2.0}
        run = training_run(tmp_path / "runs" / f"{loss}_lr{lr:g}", loss_settings, 0.1, -lr * 1e3)
        summ = json.loads((run / "train_summary.json").read_text())
        (run / "train_summary.json").write_text(json.dumps({**summ, "learning_rate": lr, "seed": 0}))
        runs.append(run)
        for epoch in (1, 2):
            # epoch 1 the same for every run: only the last epoch decides
            tags = {"method": loss, "lr": f"{lr:g}", "epoch": str(epoch), "test_set": "dev"}
            scores.append(system(tmp_path, f"{loss}_{lr:g}_e{epoch}", 0.28 if epoch == 1 else drop, tags))
    # the tie: DPO at 2e-4 ends with the very outputs of DPO at 5e-5
    tie = json.loads(scores[-3].read_text())
    scores[-1].write_text(json.dumps({**tie, "tags": {**tie["tags"], "lr": "0.0002"}}))
    return runs, scores


def test_the_lowest_last_epoch_dev_error_wins_and_a_tie_takes_the_smaller_rate(grid):
    runs, scores = grid
    selection = select(load_summaries(scores), runs)
    assert selection["chosen"] == {"lpo": 2e-4, "dpo": 5e-5}
    assert selection["sft"]["error_rate"] > 25
    lpo = next(r for r in selection["runs"] if r["loss_type"] == "lpo" and r["learning_rate"] == 2e-4)
    assert [d["epoch"] for d in lpo["dev"]] == [1, 2]
    assert lpo["logratio_rejected"] == pytest.approx(-0.2 * 0.925)
    lines = selection_table(json.loads(json.dumps(selection)))  # as score table reads it back
    chosen = [line for line in lines if "**chosen**" in line]
    assert [line.split(" | ")[2] for line in chosen] == ["5e-05", "0.0002"]  # dpo then lpo, as sorted
    assert "| epoch 1 | epoch 2 |" in lines[0]
    assert "SFT on dev:" in lines[-2]


def test_the_cli_writes_the_choice_that_score_table_prints(grid, tmp_path, capsys):
    runs, scores = grid
    out = tmp_path / "tune" / "selection.json"
    cli_main(["select-lr", "--scores", *map(str, scores), "--runs", *map(str, runs), "--out", str(out)])
    assert "lpo: learning rate 0.0002" in capsys.readouterr().out
    text = write_results(load_summaries(scores[:1]), tmp_path / "RESULTS.md", lr_selection=out)
    assert "### Learning rates chosen on dev" in text
    assert text.count("**chosen**") == 2


def test_a_score_without_its_run_and_a_run_without_scores_are_named(grid):
    runs, scores = grid
    with pytest.raises(ValueError, match=r"summary-lpo_0.0002_e1.json: lpo at learning rate 0.0002 is none"):
        select(load_summaries(scores), [r for r in runs if r.name != "lpo_lr0.0002"])
    with pytest.raises(ValueError, match=r"dpo_lr0.0002: no dev score"):
        select(load_summaries([s for s in scores if "dpo_0.0002" not in s.name]), runs)

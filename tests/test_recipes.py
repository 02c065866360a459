"""Recipe plumbing: Kaldi-style options, .done sentinels, resume messages, launch command assembly."""

import subprocess
from pathlib import Path

import pytest

RECIPES = Path(__file__).parents[1] / "recipes"


def bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True)


@pytest.fixture
def toy_recipe(tmp_path) -> Path:
    """A two-stage recipe written like ours: stage 1 counts its runs, stage 2 fails while 'broken' exists."""
    (tmp_path / "run.sh").write_text(f"""
set -euo pipefail
stage=0
stop_stage=100
force=false
expdir=exp
greeting=hello
option_names="stage stop_stage force expdir
greeting"
resume_command="bash run.sh $*"
. {RECIPES}/utils/parse_options.sh
. {RECIPES}/utils/stages.sh
one() {{ echo "${{greeting}}" >> runs.txt; }}
two() {{ [[ ! -e broken ]] || {{ echo "stage two cannot go on" >&2; return 1; }}; echo two > two.txt; }}
run_stage 1 one one
run_stage 2 two two
""")
    return tmp_path


def test_stages_run_once_and_a_rerun_says_so(toy_recipe):
    first = bash("bash run.sh --greeting bonjour", toy_recipe)
    assert first.returncode == 0, first.stderr
    again = bash("bash run.sh", toy_recipe)
    assert "stage 1 (one): already done, skipped" in again.stdout
    assert "stage 2 (two): already done, skipped" in again.stdout
    assert (toy_recipe / "runs.txt").read_text() == "bonjour\n"
    assert bash("bash run.sh --force true --stop_stage 1", toy_recipe).returncode == 0
    assert (toy_recipe / "runs.txt").read_text() == "bonjour\nhello\n"


def test_a_failed_stage_names_its_log_and_the_resume_command(toy_recipe):
    (toy_recipe / "broken").touch()
    failed = bash("bash run.sh --greeting-x 1", toy_recipe)
    assert failed.returncode == 2 and "unknown option --greeting-x" in failed.stderr
    failed = bash("bash run.sh", toy_recipe)
    assert failed.returncode == 1
    assert "stage 2 (two) FAILED" in failed.stderr and "stage two cannot go on" in failed.stderr
    assert "To resume from this stage: bash run.sh  --stage 2" in failed.stderr
    assert not (toy_recipe / "exp/.done/stage2.two").exists()
    (toy_recipe / "broken").unlink()
    resumed = bash("bash run.sh --stage 2", toy_recipe)
    assert resumed.returncode == 0 and (toy_recipe / "two.txt").exists()
    assert (toy_recipe / "runs.txt").read_text() == "hello\n"  # stage 1 was not run again


@pytest.mark.parametrize("recipe", ["aishell", "librispeech", "tts"])
def test_recipe_options(recipe):
    run = RECIPES / recipe / "run.sh"
    shown = bash(f"bash {run} --help", RECIPES)
    assert shown.returncode == 0 and "--stop_stage 100" in shown.stdout and "--ngpu 0" in shown.stdout
    bad = bash(f"bash {run} --no_such_option 1", RECIPES)
    assert bad.returncode == 2 and "unknown option --no_such_option" in bad.stderr
    # a boolean's value is run as a command (`${sft_seeds} && ...`): "yes" would print forever
    for value in ("yes", "1", ""):
        bad = bash(f"bash {run} --sft_seeds '{value}' --stage 99", RECIPES)
        assert bad.returncode == 2 and f"--sft_seeds takes true or false, not '{value}'" in bad.stderr
    assert "--force takes true or false, not 'no'" in bash(f"bash {run} --force=no", RECIPES).stderr


def test_whisper_row_takes_auto_true_or_false():
    run = RECIPES / "librispeech/run.sh"
    shown = bash(f"bash {run} --whisper_row true --help", RECIPES)
    assert shown.returncode == 0 and "--whisper_row true" in shown.stdout
    bad = bash(f"bash {run} --whisper_row maybe", RECIPES)
    assert bad.returncode == 2 and "--whisper_row takes true or false (or auto), not 'maybe'" in bad.stderr


def test_multi_gpu_commands_are_assembled(tmp_path):
    script = f"""
ngpu=4
. {RECIPES}/utils/common.sh
accelerate() {{ printf '%s\\n' accelerate "$@"; }}
speech-lpo() {{ printf '%s\\n' speech-lpo "$@"; }}
train_cmd train --config conf/lpo.yaml --r2 2.0
gen_backend
ngpu=0
train_cmd train --config conf/lpo.yaml
gen_backend
"""
    out = bash(script, tmp_path).stdout.split("\n")
    assert out[:10] == [
        "accelerate",
        "launch",
        "--num_processes",
        "4",
        "--config_file",
        "conf/accelerate_deepspeed.yaml",
        "-m",
        "speech_lpo.cli",
        "train",
        "--config",
    ]
    assert out[10:15] == ["conf/lpo.yaml", "--r2", "2.0", "--deepspeed", "conf/ds_zero2.json"]
    assert out[15] == "--backend vllm --ngpu 4"  # data parallel: one vLLM engine per GPU
    assert out[16:19] == ["speech-lpo", "train", "--config"]
    assert out[20] == "--backend transformers"


def test_prepared_sets_are_the_splits_prepare_wrote(tmp_path):
    """The ASR recipes decode every test set prepare wrote; SFT validates on the first dev set."""
    for corpus, splits in {
        "aishell": ["train", "dev", "test"],
        "librispeech": ["train", "dev-clean", "dev-other", "test-clean", "test-other"],
    }.items():
        manifests = tmp_path / corpus / "manifests"
        manifests.mkdir(parents=True)
        for split in splits:
            (manifests / f"{split}.jsonl").touch()
        (manifests / "report.json").touch()
        script = f"datadir={tmp_path / corpus}\n. {RECIPES}/utils/common.sh\n"
        script += "echo $(prepared_sets test); prepared_sets dev | head -n 1; "
        script += 'echo "[$(prepared_sets eval)]"'
        out = bash(script, tmp_path).stdout.splitlines()
        tests = [s for s in splits if s.startswith("test")]
        assert out == [" ".join(tests), splits[1], "[]"]


def test_for_each_seed_runs_seeds_side_by_side_with_one_thread_and_fails_with_one(tmp_path):
    script = f"""
set -euo pipefail
expdir=exp seeds="0 1 2" seed_jobs=2 sft_seeds=false ngpu=0
. {RECIPES}/utils/seeds.sh
work() {{
  touch "started$1"
  if [[ $1 == 0 ]]; then  # finishes only if seed 1 runs at the same time
    for _ in $(seq 200); do [[ -e started1 ]] && break; sleep 0.05; done
    [[ -e started1 ]]
  fi
  echo "seed $1 threads ${{OMP_NUM_THREADS}} root $(sft_root "$1") shared $(sft_root "")"
  [[ $1 != "${{FAIL:-none}}" ]]
}}
for_each_seed work
"""
    done = bash(script, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines() == [
        line
        for seed in "012"
        for line in (f"== seed {seed}", f"seed {seed} threads 1 root exp/seed{seed} shared exp")
    ]
    assert sorted(p.name for p in (tmp_path / "exp/logs/work").iterdir()) == [f"seed{s}.log" for s in "012"]
    failed = bash(f"FAIL=2\n{script}", tmp_path)
    assert failed.returncode != 0 and "seed 2 FAILED (log exp/logs/work/seed2.log)" in failed.stdout

"""Bad preference groups: counted skips or clear errors naming the file and line; non-finite losses stop."""

import json
import math

import pytest

from speech_lpo.groups import GroupFormatError, PreferenceGroup, load_groups, write_groups
from speech_lpo.modeling import tiny_qwen2
from speech_lpo.ref_logps import with_ref_logps
from speech_lpo.trainer import NonFiniteLossError, PreferenceConfig, PreferenceTrainer
from tests.test_packing import VOCAB, random_groups


def group(gid: str, chosen=(5, 6), rejected=((7,), (8, 9)), **kw) -> PreferenceGroup:
    return PreferenceGroup(gid, "text", [1, 2, 3], list(chosen), [list(r) for r in rejected], **kw)


def test_bad_responses_are_counted_and_dropped(tmp_path):
    path = tmp_path / "groups.jsonl"
    write_groups(
        path,
        [
            group("ok"),
            group("empty-chosen", chosen=()),
            group("one-empty", rejected=((), (8,))),
            group("same", rejected=((5, 6), (9,))),
            group("all-same", rejected=((5, 6),)),
            group("long", chosen=tuple(range(1, 40))),
        ],
    )
    groups, report = load_groups(path, max_length=30)
    assert [g.id for g in groups] == ["ok", "one-empty", "same"]
    assert [g.rejected_ids for g in groups[1:]] == [[[8]], [[9]]]
    assert report.counts == {
        "empty chosen response": 1,
        "empty rejected response": 1,
        "rejected identical to chosen": 2,
        "no usable rejected response": 1,
        "packed length over max_length 30": 1,
    }
    assert "long" in report.summary()


def test_dropping_a_rejected_response_drops_its_reference_values(tmp_path):
    path = tmp_path / "groups.jsonl"
    g = group(
        "g",
        rejected=((5, 6), (9,)),
        ref_chosen_logp=-1.0,
        ref_chosen_len=2,
        ref_rejected_logp=[-2.0, -3.0],
        ref_rejected_len=[2, 1],
    )
    write_groups(path, [g])
    (kept,), _ = load_groups(path)
    assert kept.rejected_ids == [[9]] and kept.ref_rejected_logp == [-3.0] and kept.ref_rejected_len == [1]


@pytest.mark.parametrize(
    "row, message",
    [
        ("{not json", "not a preference group"),
        (json.dumps({"id": "x", "task": "text"}), "not a preference group"),
        (
            group(
                "nan",
                ref_chosen_logp=math.nan,
                ref_chosen_len=2,
                ref_rejected_logp=[-1.0, -2.0],
                ref_rejected_len=[1, 2],
            ).to_json(),
            "NaN or infinite reference",
        ),
        (
            group(
                "len",
                ref_chosen_logp=-1.0,
                ref_chosen_len=3,
                ref_rejected_logp=[-1.0, -2.0],
                ref_rejected_len=[1, 2],
            ).to_json(),
            "computed on other tokens",
        ),
        (
            group(
                "k", ref_chosen_logp=-1.0, ref_chosen_len=2, ref_rejected_logp=[-1.0], ref_rejected_len=[1]
            ).to_json(),
            "ref values for another count",
        ),
        (PreferenceGroup("p", "text", [], [1], [[2]]).to_json(), "empty prompt"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, row, message):
    path = tmp_path / "groups.jsonl"
    path.write_text(group("fine").to_json() + "\n" + row + "\n")
    with pytest.raises(GroupFormatError, match=rf"groups.jsonl:2: .*{message}"):
        load_groups(path)


def test_duplicate_ids_are_refused(tmp_path):
    path = tmp_path / "groups.jsonl"
    write_groups(path, [group("a"), group("a")])
    with pytest.raises(GroupFormatError, match="duplicate group ids"):
        load_groups(path)


def test_non_finite_loss_stops_training_naming_the_groups(tmp_path):
    model = tiny_qwen2(VOCAB, hidden_size=32)
    # the model's own reference log-probs, in train's batches (x1 = x2 = 0 at step 0), then one broken;
    # the groups go to the trainer directly, not through load_groups' checks
    groups = list(with_ref_logps(model, random_groups(k=2, seed=1), batch_size=4))
    groups[2].ref_chosen_logp = -math.inf
    args = PreferenceConfig(
        output_dir=str(tmp_path),
        loss_type="lpo",
        report_to=[],
        use_cpu=True,
        max_steps=1,
        per_device_train_batch_size=4,
    )
    trainer = PreferenceTrainer(model=model, args=args, train_dataset=groups)
    with pytest.raises(NonFiniteLossError, match=r"at step 0; groups \['g2'\]"):
        trainer.train()


def test_lora_uses_the_base_model_as_reference(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny_qwen2(VOCAB, hidden_size=32)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    args = PreferenceConfig(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        max_steps=3,
        learning_rate=1e-2,
        logging_steps=1,
        per_device_train_batch_size=4,
    )
    trainer = PreferenceTrainer(model=model, args=args, train_dataset=random_groups(k=3, seed=2))
    trainer.train()
    logged = [h for h in trainer.state.log_history if "rewards/chosen" in h]
    assert logged[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)  # adapter starts at zero
    assert logged[-1]["rewards/margins"] != pytest.approx(0.0, abs=1e-6)  # and then moves away from the base
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)

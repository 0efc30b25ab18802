import pytest
import torch

from qformer_budget.benchmarks.synthetic_vqa import COLORS, QUESTIONS, generate_examples, vocabulary_corpus
from qformer_budget.runner.collate import InstructBlipCollator
from qformer_budget.runner.tiny import (
    InstructBlipForConditionalGeneration,
    build_tiny_instructblip,
    build_tiny_processor,
    tiny_config,
)


def test_tokenizers_train_offline_into_a_working_processor():
    processor = build_tiny_processor(vocabulary_corpus())
    model = InstructBlipForConditionalGeneration(tiny_config(processor))
    batch = InstructBlipCollator(processor)(generate_examples(3, seed=0))
    assert (batch["input_ids"] == model.config.image_token_index).sum(dim=1).tolist() == [8, 8, 8]
    assert torch.isfinite(model(**batch).loss)
    assert processor.tokenizer.decode(processor.tokenizer("yellow").input_ids, skip_special_tokens=True) == "yellow"


def test_shipped_preset_is_reproducible_and_generates():
    first, processor = build_tiny_instructblip(seed=4)
    second, _ = build_tiny_instructblip(seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert sum(isinstance(m, torch.nn.Linear) for n, m in first.named_modules() if n.startswith("qformer.")) == 120
    batch = InstructBlipCollator(processor)(generate_examples(2, seed=1))
    batch.pop("labels")
    generated = first.generate(**batch, max_new_tokens=3)
    assert generated.shape[0] == 2


def test_synthetic_task_is_deterministic_and_answers_need_the_image():
    a, b = generate_examples(20, seed=7), generate_examples(20, seed=7)
    assert [(e.question, e.answer, e.image.tobytes()) for e in a] == [(e.question, e.answer, e.image.tobytes()) for e in b]
    color_answers = {e.answer for e in generate_examples(200, seed=0) if e.question == QUESTIONS["color"]}
    assert color_answers == set(COLORS)  # one question, every answer: only the image tells them apart


def test_the_pretraining_command_parses_its_arguments_and_keeps_a_checkpoint_without_force(tmp_path, capsys, monkeypatch):
    from qformer_budget.runner import tiny

    with pytest.raises(SystemExit) as exit_info:
        tiny.main(["--help"])
    assert exit_info.value.code == 0 and "--force" in capsys.readouterr().out
    monkeypatch.setattr(tiny, "pretrain_tiny_checkpoint", lambda *a, **k: pytest.fail("it trained"))
    assert tiny.main([]) == 2  # the shipped checkpoint
    assert "pass --force to replace it" in capsys.readouterr().err
    monkeypatch.undo()
    assert tiny.main([str(tmp_path / "made"), "--steps", "2"]) == 0
    model, processor = tiny.load_tiny_checkpoint(tmp_path / "made")
    assert model.config.num_query_tokens == tiny.TINY_NUM_QUERY_TOKENS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made"]  # no staging folder left behind

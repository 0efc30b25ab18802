import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    LlamaConfig,
    LlamaTokenizer,
)

from qformer_budget.benchmarks.examples import Example
from qformer_budget.benchmarks.synthetic_vqa import vocabulary_corpus
from qformer_budget.runner.collate import IGNORE_INDEX, InstructBlipCollator
from qformer_budget.runner.evaluate import evaluate, generate_answers, rank_options, target_nll
from qformer_budget.runner.tiny import build_tiny_instructblip, tiny_config

CORPUS = vocabulary_corpus() + ["Context: some long context words Options: (a) red (b) blue Answer:"]


def png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


def mc_example(i: int, answer: int = 1) -> Example:
    choices = ("(a) red", "(b) blue", "(c) green")
    return Example(
        benchmark="iconqa", example_id=f"p{i}", prompt="Question: what color are the shapes? Options: (a) red (b) blue (c) green Short answer:",
        target=choices[answer], image_bytes=png((200, 30 * i, 30)), choices=choices, answer_index=answer,
    )


def vqa_example(i: int) -> Example:
    return Example(
        benchmark="vizwiz", example_id=f"v{i}", prompt="Question: how many shapes are there? Short answer:", target="two",
        image_bytes=png((10 * i, 100, 100)), references=("two",) * 8 + ("three",) * 2, answerable=True,
    )


@pytest.fixture(scope="module")
def t5():
    model, processor = build_tiny_instructblip(seed=0)
    return model.eval(), InstructBlipCollator(processor, max_prompt_tokens=24)


@pytest.fixture(scope="module")
def llama():
    base, _ = build_tiny_instructblip(seed=0)
    tokenizer = LlamaTokenizer().train_new_from_iterator(CORPUS, vocab_size=200)
    qformer_tokenizer = BertTokenizer().train_new_from_iterator(CORPUS, vocab_size=200)
    _, t5_processor = build_tiny_instructblip(seed=0)
    processor = InstructBlipProcessor(t5_processor.image_processor, tokenizer, qformer_tokenizer, num_query_tokens=8)
    t5_config = tiny_config(t5_processor)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    config = InstructBlipConfig(vision_config=t5_config.vision_config.to_dict(), qformer_config=t5_config.qformer_config.to_dict(),
                                text_config=text.to_dict(), num_query_tokens=8,
                                image_token_index=tokenizer.convert_tokens_to_ids("<image>"))
    torch.manual_seed(0)
    model = InstructBlipForConditionalGeneration(config).eval()
    assert model.config.use_decoder_only_language_model
    return model, InstructBlipCollator(processor, max_prompt_tokens=24, decoder_only=True)


def test_t5_batch_layout_and_left_truncation(t5):
    model, collator = t5
    long_prompt = "Context: " + "some long context words " * 20 + "Options: (a) red (b) blue Answer:"
    batch = collator.encode([Image.new("RGB", (32, 32))] * 2, [long_prompt, "Answer:"], ["(a) red", "(b) blue"])
    ids = batch["input_ids"][0].tolist()
    assert ids[:8] == [collator.image_token_id] * 8 and len(ids) == 8 + 24
    assert collator.tokenizer.decode(ids[8:], skip_special_tokens=True).endswith("Answer:")  # the cue survives
    assert batch["qformer_input_ids"].shape[1] <= 24
    assert batch["labels"][0].tolist()[-1] == collator.tokenizer.eos_token_id
    assert batch["labels"][1].tolist().count(IGNORE_INDEX) == batch["labels"].shape[1] - len(collator.tokenizer("(b) blue").input_ids)


def test_llama_batch_puts_target_after_prompt_and_labels_only_the_target(llama):
    model, collator = llama
    prompts, targets = ["Question: red?", "Question: what color are the shapes?"], ["two", "red"]
    batch = collator.encode([Image.new("RGB", (32, 32))] * 2, prompts, targets)
    tokenizer = collator.tokenizer
    for row in range(2):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        prompt_ids = tokenizer(prompts[row]).input_ids
        target_ids = tokenizer(targets[row], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        kept = labels != IGNORE_INDEX
        assert ids[: 8 + len(prompt_ids)].tolist() == [collator.image_token_id] * 8 + prompt_ids
        assert labels[kept].tolist() == ids[kept].tolist() == target_ids
        assert kept.nonzero()[0].item() == 8 + len(prompt_ids)  # the target follows the prompt directly
    generation = collator.encode_for_generation([Image.new("RGB", (32, 32))] * 2, ["Question: red?", "Question: what color are the shapes?"])
    assert generation["attention_mask"][:, -1].tolist() == [1, 1]  # left padded


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_target_nll_equals_the_models_own_loss_row_by_row(family, t5, llama):
    model, collator = t5 if family == "t5" else llama
    examples = [mc_example(i, answer=i % 3) for i in range(3)]
    batch = collator([*examples])
    ours = target_nll(model, batch, collator.decoder_only)
    for row in range(3):
        single = {k: v[row : row + 1] for k, v in batch.items()}  # right padding is masked and unlabelled
        with torch.no_grad():
            torch.testing.assert_close(ours[row], model(**single).loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_option_ranking_is_the_argmin_of_option_likelihoods(family, t5, llama):
    model, collator = t5 if family == "t5" else llama
    examples = [mc_example(i) for i in range(4)]
    ranked = rank_options(model, collator, examples, batch_size=5)
    for example, chosen in zip(examples, ranked):
        batch = collator.encode([example.load_image()] * 3, [example.prompt] * 3, list(example.choices))
        assert chosen == int(np.argmin(target_nll(model, batch, collator.decoder_only).numpy()))
    metrics, rows = evaluate(model, collator, examples, batch_size=4)
    assert metrics["accuracy"] == np.mean([r == 1 for r in ranked]) and metrics["examples"] == 4
    assert [row["predicted_index"] for row in rows] == ranked


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_generation_returns_only_new_text(family, t5, llama):
    model, collator = t5 if family == "t5" else llama
    examples = [vqa_example(i) for i in range(3)]
    answers = generate_answers(model, collator, examples, batch_size=3, max_new_tokens=4, num_beams=1)
    inputs = collator.encode_for_generation([e.load_image() for e in examples], [e.prompt for e in examples])
    with torch.no_grad():
        raw = model.generate(**inputs, max_new_tokens=4, num_beams=1, do_sample=False)
    if collator.decoder_only:
        prompt_length = inputs["input_ids"].shape[1]
        assert torch.equal(raw[:, :prompt_length], inputs["input_ids"])  # the prompt comes back first...
        raw = raw[:, prompt_length:]  # ...and is not part of the answer
    assert answers == [a.strip() for a in collator.tokenizer.batch_decode(raw, skip_special_tokens=True)]
    metrics, rows = evaluate(model, collator, [vqa_example(i) for i in range(3)], batch_size=2, max_new_tokens=4)
    assert 0.0 <= metrics["vqa_accuracy"] <= 1.0 and len(rows) == 3

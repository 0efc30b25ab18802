"""MemVP on tiny InstructBLIP models: T5 (the shipped ReLU FFN), gated-GELU T5 and a LLaMA-style decoder-only LM."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    LlamaConfig,
    OPTConfig,
    T5Config,
    Trainer,
    TrainingArguments,
)

from qformer_budget.benchmarks.synthetic_vqa import generate_examples
from qformer_budget.runner.collate import InstructBlipCollator
from qformer_budget.runner.evaluate import generate_answers
from qformer_budget.runner.presets import build_on_meta
from qformer_budget.runner.tiny import load_tiny_checkpoint, load_tiny_processor, tiny_config
from qformer_budget.vl_methods.memvp import (
    MemVPConfig,
    add_memvp,
    load_memvp,
    memvp_trainable_parameters,
    save_memvp,
)
from qformer_budget.vl_methods.memvp.layer import find_ffns, memory_output

KINDS = ("t5", "t5_gated", "llama")
NO_DROPOUT = MemVPConfig(dropout=0.0)


@pytest.fixture(scope="module")
def processor():
    return load_tiny_processor()


def text_config(kind: str, processor) -> T5Config | LlamaConfig | OPTConfig:
    tokenizer = processor.tokenizer
    ids = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if kind == "llama":
        return LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=128, bos_token_id=tokenizer.eos_token_id, **ids,
        )
    if kind == "opt":
        return OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=4, word_embed_proj_dim=32,
                         **ids)
    if kind == "t5_gated":
        return T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
                        feed_forward_proj="gated-gelu", decoder_start_token_id=tokenizer.pad_token_id, **ids)
    return tiny_config(processor).text_config


def tiny_model(kind: str, processor, seed: int = 0) -> InstructBlipForConditionalGeneration:
    """A tiny InstructBLIP with the shipped tiny vision encoder and Q-Former and the LM ``kind``."""
    base = tiny_config(processor)
    config = InstructBlipConfig(
        vision_config=base.vision_config.to_dict(), qformer_config=base.qformer_config.to_dict(),
        text_config=text_config(kind, processor).to_dict(), num_query_tokens=base.num_query_tokens,
        image_token_index=base.image_token_index,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return InstructBlipForConditionalGeneration(config).eval()


def batch_for(kind: str, processor, n: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    return InstructBlipCollator(processor, decoder_only=kind == "llama")(generate_examples(n, seed=seed))


def memvp_model(kind: str, processor, config: MemVPConfig = NO_DROPOUT, seed: int = 0):
    return add_memvp(tiny_model(kind, processor), config, seed=seed).eval()


def randomise_memory(model, seed: int = 5) -> None:
    """Non-zero P_v and a larger projector output, so that the memory visibly changes the LM."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.memory.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))


def lm_text_logits(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The base LM alone on the text prompt (placeholders removed), no memory."""
    decoder_only = model.decoder_only
    text = model.text_inputs(batch["input_ids"], batch["attention_mask"], batch["labels"] if decoder_only else None)
    if not decoder_only:
        text["labels"] = batch["labels"]
    return model.base_model.language_model(**text).logits


# --- config -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("scale", 0.0, "MemVPConfig.scale must be a finite number > 0, got 0.0"),
        ("memory_scale", float("nan"), "MemVPConfig.memory_scale must be a finite number > 0, got nan"),
        ("projector_hidden", 0, "MemVPConfig.projector_hidden must be an integer >= 1, got 0"),
        ("memory_size", 4.0, "MemVPConfig.memory_size must be an integer >= 1, got 4.0"),
        ("prompt_key_std", -0.1, "MemVPConfig.prompt_key_std must be a finite number >= 0, got -0.1"),
        ("dropout", 1.0, "MemVPConfig.dropout must be in [0, 1), got 1.0"),
    ],
)
def test_config_refuses_bad_values(field, value, message):
    with pytest.raises(ValueError) as raised:
        MemVPConfig(**{field: value})
    assert str(raised.value) == message


def test_config_defaults_are_the_released_code_and_round_trip_as_json():
    config = MemVPConfig()
    assert (config.scale, config.memory_scale, config.projector_hidden, config.prompt_key_std) == (0.01, 0.1, 128, 0.02)
    assert MemVPConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown MemVPConfig fields: rank"):
        MemVPConfig.from_dict(config.to_dict() | {"rank": 4})


# --- the memory FFN -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_zero_values_leave_every_ffn_block_exactly_unchanged(kind, processor):
    model = memvp_model(kind, processor)
    _, ffn, _ = find_ffns(model.base_model.language_model)[0]
    x = torch.randn(2, 5, model.config.text_config.hidden_size, generator=torch.Generator().manual_seed(0))
    keys = torch.randn(2, 40, x.shape[-1], generator=torch.Generator().manual_seed(1))
    base = ffn(x)
    with model.memory.attached(model._ffns, keys, torch.zeros_like(keys)):
        assert torch.equal(ffn(x), base)
    with model.memory.attached(model._ffns, keys, torch.ones_like(keys)):
        assert not torch.allclose(ffn(x), base)
    assert torch.equal(ffn(x), base)  # hooks removed on leaving the block


@pytest.mark.parametrize("kind", KINDS)
def test_zero_visual_memory_and_zero_p_v_give_the_text_only_lm(kind, processor):
    model = memvp_model(kind, processor)
    batch = batch_for(kind, processor)
    projector_out = model.memory.projector[2]
    with torch.no_grad():
        projector_out.weight.zero_()  # V = 0
        projector_out.bias.zero_()
        assert not model.memory.prompt_keys.eq(0).all() and model.memory.prompt_values.eq(0).all()
        assert torch.equal(model(**batch).logits, lm_text_logits(model, batch))
        randomise_memory(model)
        assert not torch.allclose(model(**batch).logits, lm_text_logits(model, batch))


def test_memory_equals_rows_and_columns_concatenated_to_the_ffn_weights(processor):
    model = memvp_model("t5", processor)  # the shipped tiny LM: ReLU FFN wo(relu(wi x))
    randomise_memory(model)
    name, ffn, _ = find_ffns(model.base_model.language_model)[0]
    assert type(ffn).__name__ == "T5DenseActDense" and name.startswith("encoder.")
    batch = batch_for("t5", processor, n=1)
    with torch.no_grad():
        keys, values = model.memory(model.query_outputs(batch["pixel_values"], batch["qformer_input_ids"]))
        s = model.memvp_config.memory_scale
        w_in = torch.cat([ffn.wi.weight, keys[0]], dim=0)  # [W_in; K]
        w_out = torch.cat([ffn.wo.weight, s * values[0].T], dim=1)  # [W_out, s V']
        x = torch.randn(1, 6, w_in.shape[1], generator=torch.Generator().manual_seed(3))
        concatenated = torch.relu(x @ w_in.T) @ w_out.T
        with model.memory.attached(model._ffns, keys, values):
            hooked = ffn(x)
    assert w_in.shape[0] == ffn.wi.out_features + model.memvp_config.memory_size
    torch.testing.assert_close(hooked, concatenated, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(hooked, ffn(x))


@pytest.mark.parametrize("kind", ["t5_gated", "llama"])
def test_gated_ffn_memory_is_an_ungated_ffn_of_the_memory_rows_beside_it(kind, processor):
    model = memvp_model(kind, processor)
    randomise_memory(model)
    _, ffn, activation = find_ffns(model.base_model.language_model)[0]
    keys, values = (torch.randn(1, 40, 32, generator=torch.Generator().manual_seed(i)) for i in (1, 2))
    x = torch.randn(1, 6, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), model.memory.attached(model._ffns, keys, values):
        added = ffn(x) - ffn.forward(x)  # the hooked call minus the plain forward (hooks skipped)
    side_ffn = activation(x @ keys[0].T) @ (model.memvp_config.memory_scale * values[0])
    torch.testing.assert_close(added, side_ffn, rtol=1e-4, atol=1e-6)
    gated = activation(x @ keys[0].T) * (x @ keys[0].T)  # what appending K to both input matrices would give
    assert not torch.allclose(added, gated @ (model.memvp_config.memory_scale * values[0]), atol=1e-4)


def test_memory_follows_beam_expansion_and_refuses_a_mismatched_batch():
    x = torch.randn(4, 3, 8)
    keys, values = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    expanded = memory_output(x, keys, values, torch.relu, 0.1)
    per_row = memory_output(x, keys.repeat_interleave(2, 0), values.repeat_interleave(2, 0), torch.relu, 0.1)
    assert torch.equal(expanded, per_row)
    with pytest.raises(ValueError, match="batch size 3, not a multiple of the memory's 2"):
        memory_output(x[:3], keys, values, torch.relu, 0.1)


# --- inputs: no query positions -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_lm_sequence_is_the_text_prompt_alone(kind, processor):
    model = memvp_model(kind, processor)
    batch = batch_for(kind, processor)
    image_token, queries = model.config.image_token_index, model.config.num_query_tokens
    assert (batch["input_ids"][:, :queries] == image_token).all()  # the collator's placeholders
    seen = {}

    def capture(module, args, kwargs):
        seen.update(kwargs)

    handle = model.base_model.language_model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        output = model(**batch)
    finally:
        handle.remove()
    assert seen["input_ids"].shape[1] == batch["input_ids"].shape[1] - queries
    assert not (seen["input_ids"] == image_token).any()
    assert torch.equal(seen["input_ids"], batch["input_ids"][:, queries:])
    assert torch.equal(seen["attention_mask"], batch["attention_mask"][:, queries:])
    if kind == "llama":
        assert torch.equal(seen["labels"], batch["labels"][:, queries:])
        assert output.logits.shape[1] == batch["input_ids"].shape[1] - queries
    else:
        assert torch.equal(seen["labels"], batch["labels"])
        assert output.logits.shape[1] == batch["labels"].shape[1]


def test_left_padded_generation_inputs_keep_their_padding(processor):
    model = memvp_model("llama", processor)
    collator = InstructBlipCollator(processor, decoder_only=True)
    examples = generate_examples(4, seed=3, styles=("short", "choices"))
    inputs = collator.encode_for_generation([e.image for e in examples], [e.prompt for e in examples])
    assert (inputs["attention_mask"] == 0).any()
    text = model.text_inputs(inputs["input_ids"], inputs["attention_mask"])
    for row in range(4):
        kept = inputs["input_ids"][row] != model.config.image_token_index
        assert torch.equal(text["input_ids"][row], inputs["input_ids"][row][kept])
        assert torch.equal(text["attention_mask"][row], inputs["attention_mask"][row][kept])
    assert text["attention_mask"][:, -1].eq(1).all()  # still left-padded


def test_rows_with_different_placeholder_counts_are_refused(processor):
    model = memvp_model("t5", processor)
    input_ids = torch.tensor([[model.config.image_token_index, 5, 6], [5, 6, 7]])
    with pytest.raises(ValueError, match=r"different numbers of image placeholder tokens \(id 346\): \[1, 0\]"):
        model.text_inputs(input_ids)


# --- generation with a KV cache -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_incremental_decoding_equals_a_full_forward_pass(kind, processor):
    model = memvp_model(kind, processor)
    randomise_memory(model)
    collator = InstructBlipCollator(processor, decoder_only=kind == "llama")
    examples = [e for e in generate_examples(12, seed=2) if "color" in e.question][:2]  # same prompt length
    inputs = collator.encode_for_generation([e.image for e in examples], [e.prompt for e in examples])
    assert inputs["attention_mask"].all()
    new = 6
    output = model.generate(
        **inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True,
        output_logits=True, return_dict_in_generate=True,
    )
    cached = torch.stack(output.logits, dim=1)
    if kind == "llama":
        prompt_length = inputs["input_ids"].shape[1]
        assert torch.equal(output.sequences[:, :prompt_length], inputs["input_ids"])
        full_ids = output.sequences[:, :-1]
        full = model(**inputs | {"input_ids": full_ids, "attention_mask": torch.ones_like(full_ids)}).logits
        full = full[:, -new:]
    else:
        decoder_ids = output.sequences[:, :-1]
        full = model(**inputs, decoder_input_ids=decoder_ids).logits
    assert cached.shape == full.shape == (2, new, model.config.text_config.vocab_size)
    torch.testing.assert_close(cached, full, rtol=1e-4, atol=1e-5)
    uncached = model.generate(**inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=False)
    assert torch.equal(uncached, output.sequences)


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_generate_with_beams_returns_what_the_base_model_returns(kind, processor):
    model = memvp_model(kind, processor)
    inputs = InstructBlipCollator(processor, decoder_only=kind == "llama").encode_for_generation(
        [e.image for e in generate_examples(2, seed=4)], [e.prompt for e in generate_examples(2, seed=4)]
    )
    settings = dict(max_new_tokens=3, min_new_tokens=3, num_beams=2, num_return_sequences=2, do_sample=False)
    ours = model.generate(**inputs, **settings)
    base = model.base_model.generate(**inputs, **settings)
    assert ours.shape[0] == base.shape[0] == 4
    if kind == "llama":  # prompt as given (placeholders included), then the new tokens, like the base model
        assert torch.equal(ours[:, : inputs["input_ids"].shape[1]], inputs["input_ids"].repeat_interleave(2, 0))
        assert ours.shape[1] == base.shape[1]


def test_runner_generation_gets_exactly_the_new_tokens(processor):
    model = memvp_model("llama", processor)
    randomise_memory(model)
    collator = InstructBlipCollator(processor, decoder_only=True)
    examples = generate_examples(2, seed=6)
    answers = generate_answers(model, collator, examples, batch_size=2, max_new_tokens=4, num_beams=1)
    inputs = collator.encode_for_generation([e.image for e in examples], [e.prompt for e in examples])
    text = model.text_inputs(inputs["input_ids"], inputs["attention_mask"])
    with torch.no_grad(), model.visual_memory(
        inputs["pixel_values"], inputs["qformer_input_ids"], inputs["qformer_attention_mask"]
    ):
        direct = model.base_model.language_model.generate(**text, max_new_tokens=4, do_sample=False)
    new_tokens = direct[:, text["input_ids"].shape[1] :]
    expected = [t.strip() for t in processor.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    assert answers == expected and any(answers)


# --- parameters, gradients, seeds -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_trainable_parameters_are_the_memory_only_and_match_the_formula(kind, processor):
    config = MemVPConfig(memory_size=12, projector_hidden=16)
    model = add_memvp(tiny_model(kind, processor), config, seed=0)
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert set(trainable) == {
        "memory.projector.0.weight", "memory.projector.0.bias", "memory.projector.2.weight", "memory.projector.2.bias",
        "memory.prompt_keys", "memory.prompt_values",
    }
    assert sum(trainable.values()) == memvp_trainable_parameters(config, lm_hidden=32, visual_width=32)


@pytest.mark.parametrize(
    ("preset", "expected"),
    # 768*128 + 128 + 128*d + d + 2*40*d
    [("instructblip-flan-t5-xl", 98_432 + 2_048 * 209), ("instructblip-vicuna-7b", 98_432 + 4_096 * 209)],
)
def test_trainable_count_on_the_real_architectures(preset, expected):
    model = add_memvp(build_on_meta(preset), MemVPConfig(), seed=0)
    counted = sum(p.numel() for p in model.parameters() if p.requires_grad)
    text = model.config.text_config
    assert counted == expected == memvp_trainable_parameters(MemVPConfig(), text.hidden_size, 768)
    layers = text.num_layers + text.num_decoder_layers if preset.endswith("xl") else text.num_hidden_layers
    assert len(model.ffn_names) == layers  # every FFN of the LM (T5: encoder and decoder)


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_gradients_reach_the_projector_and_prompts_and_nothing_else(kind, processor):
    model = memvp_model(kind, processor).train()
    model(**batch_for(kind, processor)).loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith("memory."):
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
        else:
            assert parameter.grad is None, name


def test_seed_fixes_the_initialisation_without_touching_the_global_rng(processor):
    state = torch.get_rng_state()
    first = add_memvp(tiny_model("t5", processor), MemVPConfig(), seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    second = add_memvp(tiny_model("t5", processor), MemVPConfig(), seed=7)
    other = add_memvp(tiny_model("t5", processor), MemVPConfig(), seed=8)
    for name, tensor in first.memory.state_dict().items():
        assert torch.equal(tensor, second.memory.state_dict()[name]), name
    assert not torch.equal(first.memory.prompt_keys, other.memory.prompt_keys)
    assert first.memory.prompt_values.eq(0).all() and first.memory.projector[0].bias.eq(0).all()
    assert 0.015 < first.memory.prompt_keys.std() < 0.025


# --- save / load, training ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_save_and_load_round_trip(kind, processor, tmp_path):
    config = MemVPConfig(memory_size=10, scale=0.5, dropout=0.0)
    model = add_memvp(tiny_model(kind, processor), config, seed=1).eval()
    randomise_memory(model)
    batch = batch_for(kind, processor)
    save_memvp(model, tmp_path / "memvp")
    assert sorted(p.name for p in (tmp_path / "memvp").iterdir()) == ["memvp.safetensors", "memvp_config.json"]
    loaded = load_memvp(tiny_model(kind, processor), tmp_path / "memvp").eval()
    assert loaded.memvp_config == config
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
        assert not torch.equal(add_memvp(tiny_model(kind, processor), config, seed=1).eval()(**batch).logits,
                               model(**batch).logits)


def test_loading_from_a_folder_without_an_adapter_names_the_folder(processor, tmp_path):
    with pytest.raises(FileNotFoundError, match="has no memvp_config.json: not a folder written by save_memvp"):
        load_memvp(tiny_model("t5", processor), tmp_path)


def test_a_plain_trainer_trains_only_the_memory(processor, tmp_path):
    model = add_memvp(tiny_model("t5", processor), MemVPConfig(), seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
        save_strategy="no", logging_strategy="no", report_to=[], use_cpu=True, remove_unused_columns=False,
        dataloader_num_workers=0, disable_tqdm=True,
    )
    Trainer(model=model, args=args, train_dataset=generate_examples(8, seed=0),
            data_collator=InstructBlipCollator(processor)).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {n for n in before if n.startswith("memory.")}


def test_the_lm_sees_the_image_through_the_memory():
    base, processor = load_tiny_checkpoint()  # trained vision encoder and Q-Former: images tell apart
    model = add_memvp(base, NO_DROPOUT, seed=0).eval()
    randomise_memory(model)
    batch = InstructBlipCollator(processor)(generate_examples(3, seed=1))
    with torch.no_grad():
        with_images = model(**batch).logits
        other_images = model(**batch | {"pixel_values": batch["pixel_values"].flip(0)}).logits
    assert not torch.allclose(with_images, other_images)


# --- BLIP-2 and bad inputs ------------------------------------------------------------------------------------


def test_blip2_queries_become_memory_too(processor):
    base = tiny_config(processor)
    config = Blip2Config(
        vision_config=base.vision_config.to_dict(),
        qformer_config=base.qformer_config.to_dict() | {"model_type": "blip_2_qformer"},
        text_config=base.text_config.to_dict(), num_query_tokens=8, image_token_index=base.image_token_index,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = add_memvp(Blip2ForConditionalGeneration(config).eval(), NO_DROPOUT, seed=0).eval()
    batch = batch_for("t5", processor)
    del batch["qformer_input_ids"], batch["qformer_attention_mask"]  # BLIP-2's Q-Former reads no text
    randomise_memory(model)
    logits = model(**batch).logits
    assert logits.shape[1] == batch["labels"].shape[1]
    assert not torch.allclose(logits, lm_text_logits(model, batch))


def test_lm_without_a_recognised_ffn_is_refused_naming_the_model(processor):
    with pytest.raises(ValueError) as raised:
        add_memvp(tiny_model("opt", processor), MemVPConfig())
    assert str(raised.value).startswith(
        "InstructBlipForConditionalGeneration: its language model OPTForCausalLM has no FFN block MemVP recognises"
    )


def test_other_models_and_too_small_memories_are_refused(processor):
    with pytest.raises(TypeError, match="got Linear"):
        add_memvp(torch.nn.Linear(2, 2), MemVPConfig())
    with pytest.raises(ValueError, match="memory_size=4 is smaller than the 8 query tokens"):
        add_memvp(tiny_model("t5", processor), MemVPConfig(memory_size=4))


def test_hooks_are_removed_when_the_lm_raises(processor):
    model = memvp_model("t5", processor)
    batch = batch_for("t5", processor)
    with pytest.raises((ValueError, RuntimeError)):  # decoder batch of 2 against 3 images
        model(**batch | {"labels": batch["labels"][:2]})
    assert all(not module._forward_hooks for module, _ in model._ffns)


def test_gradient_checkpointing_is_refused(processor):
    with pytest.raises(NotImplementedError, match="does not support gradient checkpointing"):
        memvp_model("t5", processor).gradient_checkpointing_enable()

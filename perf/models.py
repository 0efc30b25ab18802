"""Models the perf scripts measure: the tiny test model, or one with the real Q-Former's dimensions."""

from __future__ import annotations

from transformers import (
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    T5Config,
)

from qformer_budget.peft_hooks.model import seeded
from qformer_budget.runner.tiny import build_tiny_instructblip


def real_size_model(processor: InstructBlipProcessor) -> InstructBlipForConditionalGeneration:
    """Real Q-Former dims (768 hidden, 3072 FFN, 12 layers, 32 queries, 1408-wide image features).

    The vision encoder and the LM are as small as works: the Q-Former is what is measured.
    """
    tokenizer = processor.tokenizer
    config = InstructBlipConfig(
        vision_config=dict(hidden_size=1408, intermediate_size=1408, num_hidden_layers=1, num_attention_heads=16,
                           image_size=32, patch_size=8),
        qformer_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            cross_attention_frequency=2, encoder_hidden_size=1408,
                            vocab_size=len(processor.qformer_tokenizer)),
        text_config=T5Config(vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=1,
                             num_decoder_layers=1, num_heads=4, decoder_start_token_id=tokenizer.pad_token_id).to_dict(),
        num_query_tokens=processor.num_query_tokens, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    with seeded(0):
        return InstructBlipForConditionalGeneration(config)


def preset_model(preset: str, processor: InstructBlipProcessor) -> InstructBlipForConditionalGeneration:
    """``"tiny"``: the tests' tiny model (seed 0); ``"real"``: :func:`real_size_model`."""
    if preset == "tiny":
        return build_tiny_instructblip(seed=0)[0]
    if preset == "real":
        return real_size_model(processor)
    raise ValueError(f"unknown preset {preset!r}: choose 'tiny' or 'real'")

"""A tiny InstructBLIP built offline: random weights, tokenizers trained locally, a real processor.

The Q-Former keeps the real model's structure (12 layers, cross-attention every 2nd layer, a query
FFN and a text FFN per layer: 120 Linear layers) at toy widths; the vision encoder and the
FlanT5-style LM are as small as works.

The tokenizers are trained once and shipped in ``assets/tiny_processor`` (36 KB), because the
tokenizers library assigns ids to tied pieces in a different order on every training run; the
shipped files keep runs reproducible. ``python -m qformer_budget.tiny`` rewrites them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import (
    BertTokenizer,
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipProcessor,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    T5Config,
    T5Tokenizer,
)
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from .synthetic_vqa import vocabulary_corpus

TINY_IMAGE_SIZE = 32
TINY_NUM_QUERY_TOKENS = 8
TINY_QFORMER_LAYERS = 12
TINY_PROCESSOR_DIR = Path(__file__).parent / "assets" / "tiny_processor"


def build_tiny_processor(corpus: list[str], vocab_size: int = 160) -> InstructBlipProcessor:
    """An InstructBlipProcessor whose T5 and BERT tokenizers are trained on ``corpus`` (milliseconds)."""
    tokenizer = T5Tokenizer().train_new_from_iterator(corpus, vocab_size=vocab_size)
    qformer_tokenizer = BertTokenizer().train_new_from_iterator(corpus, vocab_size=vocab_size)
    image_processor = BlipImageProcessorPil(
        size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return InstructBlipProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        qformer_tokenizer=qformer_tokenizer,
        num_query_tokens=TINY_NUM_QUERY_TOKENS,
    )


def tiny_config(processor: InstructBlipProcessor, hidden: int = 32) -> InstructBlipConfig:
    """Config of the tiny model, sized to ``processor``'s tokenizers. Dropout is off everywhere."""
    vision = InstructBlipVisionConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2, num_attention_heads=4,
        image_size=TINY_IMAGE_SIZE, patch_size=8, attention_dropout=0.0,
    )
    qformer = InstructBlipQFormerConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=TINY_QFORMER_LAYERS,
        num_attention_heads=4, cross_attention_frequency=2, encoder_hidden_size=hidden,
        vocab_size=len(processor.qformer_tokenizer), max_position_embeddings=128,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=processor.qformer_tokenizer.pad_token_id,
    )
    tokenizer = processor.tokenizer
    text = T5Config(
        vocab_size=len(tokenizer), d_model=hidden, d_kv=hidden // 4, d_ff=2 * hidden, num_layers=2,
        num_decoder_layers=2, num_heads=4, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    )
    return InstructBlipConfig(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
        num_query_tokens=TINY_NUM_QUERY_TOKENS, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )


def load_tiny_processor(path: str | Path = TINY_PROCESSOR_DIR) -> InstructBlipProcessor:
    """The shipped tiny processor, loaded the way a real local checkpoint is."""
    return InstructBlipProcessor.from_pretrained(str(path), local_files_only=True)


def build_tiny_instructblip(seed: int = 0) -> tuple[InstructBlipForConditionalGeneration, InstructBlipProcessor]:
    """The tiny model with weights drawn from ``seed``, and the shipped processor."""
    processor = load_tiny_processor()
    config = tiny_config(processor)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = InstructBlipForConditionalGeneration(config)
    return model, processor


def write_tiny_processor(path: str | Path = TINY_PROCESSOR_DIR) -> None:
    """Train the tiny tokenizers on the synthetic task's texts and save the processor to ``path``."""
    build_tiny_processor(vocabulary_corpus()).save_pretrained(str(path))


if __name__ == "__main__":
    write_tiny_processor(sys.argv[1] if len(sys.argv) > 1 else TINY_PROCESSOR_DIR)

"""A tiny InstructBLIP built offline: random weights, tokenizers trained locally, a real processor.

The Q-Former keeps the real model's structure (12 layers, cross-attention every 2nd layer, a query
FFN and a text FFN per layer: 120 Linear layers) at toy widths; the vision encoder and the
FlanT5-style LM are as small as works.

Two forms: ``build_tiny_instructblip(seed)`` draws random weights (tests); ``load_tiny_checkpoint()``
loads the shipped checkpoint in ``assets/tiny-instructblip`` (about 1.5 MB), which was first
aligned on synthetic captioning and generic visual questions, as the real InstructBLIP is
pretrained before anyone fine-tunes it. The tokenizers are trained once and shipped with it,
because the tokenizers library numbers tied pieces differently on every training run.
``python -m qformer_budget.runner.tiny OUT`` makes another (a few minutes on 2 CPU cores; see :func:`main`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
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

from qformer_budget.benchmarks import load_benchmark
from qformer_budget.benchmarks.synthetic import synthetic_corpus, write_synthetic
from qformer_budget.benchmarks.synthetic_vqa import STYLES, generate_examples, vocabulary_corpus

from .collate import InstructBlipCollator
from .presets import PROCESSOR_CLASSES, TINY_CHECKPOINT_DIR, BlipProcessor, ModelPreset, load_checkpoint

TINY_IMAGE_SIZE = 32
TINY_NUM_QUERY_TOKENS = 8
TINY_QFORMER_LAYERS = 12
UNUSED_PIECE_SCORE = -1000.0  # the score of fitted_tiny_processor's padding pieces: never chosen over a real piece


def build_tiny_processor(corpus: list[str], vocab_size: int = 400) -> InstructBlipProcessor:
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


def load_tiny_processor(path: str | Path = TINY_CHECKPOINT_DIR) -> InstructBlipProcessor:
    """The shipped tiny processor, loaded the way a real local checkpoint is."""
    return InstructBlipProcessor.from_pretrained(str(path), local_files_only=True)


def fitted_tiny_processor(preset: ModelPreset) -> BlipProcessor:
    """The tiny processor's tokenizers fitted to a T5 ``preset``'s vocabulary, with images at its vision size.

    T5's vocabulary is padded with pieces no text uses (``<unused_N>``, scored far below any other) so that the
    added ``<image>`` lands on the preset's ``image_token_index``, as in the real FlanT5 processor (32100 of 32128).
    Prompts tokenise as the tiny model's do; a rehearsal of the real architecture (``runner.rehearse``) needs no
    more, and nothing is downloaded. A ValueError says why a preset does not fit.
    """
    if preset.llm_family != "t5":
        raise ValueError(f"{preset.name} has a {preset.llm_family} LM: only T5 presets fit the tiny T5 tokenizer, "
                         "and no other tokenizer is built offline")
    config = preset.config_factory()
    tiny = load_tiny_processor()
    document = json.loads(tiny.tokenizer.backend_tokenizer.to_str())
    pieces = document["model"]["vocab"]
    image_id = config.image_token_index
    if not len(pieces) <= image_id < config.text_config.vocab_size:
        raise ValueError(f"{preset.name}: <image> at {image_id} does not fit a vocabulary of "
                         f"{config.text_config.vocab_size} after the tiny tokenizer's {len(pieces)} pieces")
    pieces += [[f"<unused_{i}>", UNUSED_PIECE_SCORE] for i in range(len(pieces), image_id)]
    with tempfile.TemporaryDirectory() as folder:
        tiny.tokenizer.save_pretrained(folder)
        (Path(folder) / "tokenizer.json").write_text(json.dumps(document), encoding="utf-8")
        tokenizer = type(tiny.tokenizer).from_pretrained(folder, local_files_only=True)
    side = config.vision_config.image_size
    parts = {
        "image_processor": BlipImageProcessorPil(size={"height": side, "width": side}),
        "tokenizer": tokenizer, "num_query_tokens": config.num_query_tokens,
    }
    if preset.model_class is InstructBlipForConditionalGeneration:
        parts["qformer_tokenizer"] = tiny.qformer_tokenizer
    return PROCESSOR_CLASSES[preset.model_class](**parts)


def load_tiny_checkpoint(
    path: str | Path = TINY_CHECKPOINT_DIR,
) -> tuple[InstructBlipForConditionalGeneration, InstructBlipProcessor]:
    """The shipped aligned tiny model and its processor, loaded the way a real local checkpoint is."""
    return load_checkpoint(path, InstructBlipForConditionalGeneration)


def build_tiny_instructblip(seed: int = 0) -> tuple[InstructBlipForConditionalGeneration, InstructBlipProcessor]:
    """The tiny model with weights drawn from ``seed``, and the shipped processor."""
    processor = load_tiny_processor()
    config = tiny_config(processor)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = InstructBlipForConditionalGeneration(config)
    return model, processor


def pretraining_examples(captions: int, questions: int, seed: int) -> list:
    """Synthetic scenes with captions (Flickr30k-like, other seeds than the benchmark data) and generic questions.

    Questions come in the answer formats the benchmarks use (a word; a lettered option after an
    IconQA- or ScienceQA-style prompt with a neutral context), as InstructBLIP's instruction tuning
    taught the real model those formats; the benchmarks' own tasks are not in it.
    """
    with tempfile.TemporaryDirectory() as folder:
        root = write_synthetic("flickr30k", folder, seed=seed + 7919, sizes={"train": captions, "val": 1, "test": 1})
        scenes = [
            dataclasses.replace(e, image_path=None, image_bytes=e.image_path.read_bytes())
            for e in load_benchmark("flickr30k", root, "train")
        ]
    return scenes + generate_examples(questions, seed=seed + 104729, styles=STYLES)


def pretrain_tiny_checkpoint(
    out_dir: str | Path = TINY_CHECKPOINT_DIR, steps: int = 3000, batch_size: int = 16, learning_rate: float = 2e-3,
    seed: int = 0,
) -> dict:
    """Train every weight of a fresh tiny model on ``pretraining_examples`` and save it with its processor."""
    processor = build_tiny_processor(vocabulary_corpus() + synthetic_corpus())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InstructBlipForConditionalGeneration(tiny_config(processor))
    examples = pretraining_examples(captions=600, questions=3000, seed=seed)
    collate = InstructBlipCollator(processor)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.05)
    order = np.random.default_rng(seed)
    started, losses = time.perf_counter(), []
    model.train()
    for step in range(steps):
        batch = collate([examples[i] for i in order.choice(len(examples), batch_size, replace=False)])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
        if step % 250 == 0 or step == steps - 1:
            print(f"step {step}: loss {np.mean(losses[-50:]):.3f}", flush=True)
    out_dir = Path(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))  # renamed into place at the end
    model.save_pretrained(str(staging))
    processor.save_pretrained(str(staging))
    report = {
        "steps": steps, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
        "examples": len(examples), "first_loss": float(np.mean(losses[:50])), "final_loss": float(np.mean(losses[-50:])),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (staging / "pretraining.json").write_text(json.dumps(report, indent=2) + "\n")
    if out_dir.exists():
        replaced = out_dir.with_name(f".{out_dir.name}.replaced")
        out_dir.rename(replaced)
        staging.rename(out_dir)
        shutil.rmtree(replaced)
    else:
        staging.rename(out_dir)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m qformer_budget.runner.tiny [OUT] [--steps N] [--force]``: pretrain a tiny checkpoint into OUT.

    OUT defaults to the shipped checkpoint, and a folder that already holds files is replaced only with
    ``--force``; the new checkpoint is written beside it and renamed into place when it is complete.
    """
    parser = argparse.ArgumentParser(prog="python -m qformer_budget.runner.tiny", description=main.__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(TINY_CHECKPOINT_DIR), help="the checkpoint folder to write")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps (default 3000, a few minutes)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it already holds files")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        print(f"{out} already holds files (the shipped checkpoint, if it is the default); pass --force to replace it",
              file=sys.stderr)
        return 2
    print(pretrain_tiny_checkpoint(out, steps=args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())

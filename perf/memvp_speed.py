"""MemVP against input-space visual prompting on the same InstructBLIP: training step and generation time.

Two variants share one frozen model (vision encoder, Q-Former, LM) and see the same batches:

- ``prompt``: the base InstructBLIP. The Q-Former's query outputs go through ``language_projection`` and take
  the places of the ``num_query_tokens`` ``<image>`` placeholders in the LM input (input-space visual prompts,
  as LLaVA-style methods do); ``language_projection`` trains (Q-Former width x LM width + bias, the input-space
  counterpart of MemVP's projector), everything else is frozen. No LoRA in either variant.
- ``memvp``: ``add_memvp`` with the default ``MemVPConfig``: projector, ``P_k`` and ``P_v`` train; the LM input
  is the text prompt alone and every FFN reads the visual memory.

Both back-propagate through the whole LM (the trainable tensors sit at its input or in every layer).

Presets (random weights built from configs, nothing downloaded):

- ``tiny``: the tests' tiny InstructBLIP (8 query tokens; T5: the shipped tiny T5; llama: the same widths);
- ``real``: the LM widths of FlanT5-XL (d_model 2048, d_ff 5120, 32 heads, gated GELU, 2 encoder + 2 decoder
  layers) and of Vicuna-7B (4096 / 11008, 32 heads, 2 layers), with their real vocabularies; a Q-Former of the
  real width (768, FFN 3072, 32 query tokens) but 2 layers; a 1-layer 64-wide vision encoder on 32 px images.

Timed, per variant: one training step (forward, backward, AdamW step, zero_grad) and ``generate`` of exactly
``--new-tokens`` tokens (greedy, KV cache). The variants alternate step by step (order rotating each repeat)
after one warm-up round; medians over ``--repeats`` are printed with their ratio and the sequence lengths.

From the repository root (``python perf/memvp_speed.py`` works too once ``vl_methods`` is installed):

    OMP_NUM_THREADS=1 python -m perf.memvp_speed --preset tiny --threads 1
    python -m perf.memvp_speed --preset real --lm t5 --threads 2 --repeats 10
    python -m perf.memvp_speed --preset real --lm llama --batch 2 --prompt-tokens 32 --repeats 3

At the defaults (batch 4, 48 prompt tokens, 8 targets, 16 new tokens) a real-preset LLaMA training step takes
seconds per variant on 2 CPU cores; ``--batch 1 --prompt-tokens 16 --repeats 1`` checks the script in a minute.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from transformers import (
    InstructBlipConfig,
    InstructBlipForConditionalGeneration,
    InstructBlipQFormerConfig,
    InstructBlipVisionConfig,
    LlamaConfig,
)

from qformer_budget.runner.presets import instructblip_flan_t5_xl_config, instructblip_vicuna_7b_config
from qformer_budget.runner.tiny import load_tiny_processor, tiny_config
from qformer_budget.vl_methods.memvp import MemVPConfig, add_memvp

VARIANTS = ("prompt", "memvp")


def model_config(preset: str, lm: str) -> InstructBlipConfig:
    """The ``preset``'s InstructBLIP config with a T5 (``lm="t5"``) or LLaMA (``"llama"``) LM."""
    if preset == "tiny":
        tiny = tiny_config(load_tiny_processor())
        text = tiny.text_config
        if lm == "llama":
            text = LlamaConfig(
                vocab_size=text.vocab_size, hidden_size=text.d_model, intermediate_size=text.d_ff, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=512, pad_token_id=text.pad_token_id,
                bos_token_id=text.eos_token_id, eos_token_id=text.eos_token_id,
            )
        vision, qformer, queries = tiny.vision_config, tiny.qformer_config, tiny.num_query_tokens
        image_token = tiny.image_token_index
    else:
        real = instructblip_flan_t5_xl_config() if lm == "t5" else instructblip_vicuna_7b_config()
        text = real.text_config
        if lm == "t5":
            text.num_layers = text.num_decoder_layers = 2
        else:
            text.num_hidden_layers = 2
        vision = InstructBlipVisionConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, image_size=32,
            patch_size=8,
        )
        qformer = InstructBlipQFormerConfig(
            vocab_size=30523, hidden_size=768, intermediate_size=3072, num_hidden_layers=2, num_attention_heads=12,
            cross_attention_frequency=2, encoder_hidden_size=64,
        )
        queries, image_token = real.num_query_tokens, real.image_token_index
    return InstructBlipConfig(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
        num_query_tokens=queries, image_token_index=image_token,
    )


def make_inputs(
    config: InstructBlipConfig, batch: int, prompt_tokens: int, target_tokens: int, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Training and generation inputs laid out as ``runner.collate.InstructBlipCollator`` lays them out.

    Token ids are random below the ``<image>`` id; every row has the full length (no padding).
    """
    generator = torch.Generator().manual_seed(seed)
    vision, queries = config.vision_config, config.num_query_tokens

    def ids(length: int, high: int) -> torch.Tensor:
        return torch.randint(3, high, (batch, length), generator=generator)

    placeholders = torch.full((batch, queries), config.image_token_index)
    prompt = torch.cat([placeholders, ids(prompt_tokens, config.image_token_index)], dim=1)
    images = {
        "pixel_values": torch.randn(batch, 3, vision.image_size, vision.image_size, generator=generator),
        "qformer_input_ids": ids(min(prompt_tokens, 64), config.qformer_config.vocab_size),
    }
    target = ids(target_tokens, config.image_token_index)
    if config.use_decoder_only_language_model:
        sequence = torch.cat([prompt, target], dim=1)
        labels = torch.cat([torch.full_like(prompt, -100), target], dim=1)
        train = images | {"input_ids": sequence, "attention_mask": torch.ones_like(sequence), "labels": labels}
    else:
        train = images | {"input_ids": prompt, "attention_mask": torch.ones_like(prompt), "labels": target}
    return train, images | {"input_ids": prompt, "attention_mask": torch.ones_like(prompt)}


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--lm", choices=["t5", "llama", "both"], default="both")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=48, help="text prompt tokens per row, without queries")
    parser.add_argument("--target-tokens", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    print(f"preset={options.preset} threads={options.threads} batch={options.batch} repeats={options.repeats} "
          f"(medians; one warm-up round; variants alternate)")
    for lm in ("t5", "llama") if options.lm == "both" else (options.lm,):
        measure(options, lm)


def measure(options: argparse.Namespace, lm: str) -> None:
    config = model_config(options.preset, lm)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = InstructBlipForConditionalGeneration(config)
    memvp = add_memvp(base, MemVPConfig(), seed=0)  # freezes the shared base model
    base.language_projection.requires_grad_(True)  # the prompt variant's trainable projector
    models = {"prompt": base, "memvp": memvp}
    trainable = {"prompt": list(base.language_projection.parameters()), "memvp": list(memvp.memory.parameters())}
    optimizers = {name: torch.optim.AdamW(params, lr=1e-4) for name, params in trainable.items()}
    train_inputs, generate_inputs = make_inputs(config, options.batch, options.prompt_tokens, options.target_tokens)

    def train_step(name: str) -> None:
        models[name](**train_inputs).loss.backward()
        optimizers[name].step()
        optimizers[name].zero_grad(set_to_none=True)

    def generate(name: str) -> None:
        new = options.new_tokens
        models[name].generate(**generate_inputs, max_new_tokens=new, min_new_tokens=new, do_sample=False, num_beams=1)

    timings = {(task, name): [] for task in ("train", "generate") for name in VARIANTS}
    for repeat in range(options.repeats + 1):
        order = VARIANTS[repeat % 2 :] + VARIANTS[: repeat % 2]
        for task, action in (("train", train_step), ("generate", generate)):
            for name in order:
                models[name].train(task == "train")  # the variants share one base model: set its mode untimed
                seconds = timed(lambda: action(name))
                if repeat:
                    timings[task, name].append(seconds)

    text = config.text_config
    queries, prompt, target = config.num_query_tokens, options.prompt_tokens, options.target_tokens
    if config.use_decoder_only_language_model:
        widths = f"hidden {text.hidden_size}, FFN {text.intermediate_size}, {text.num_hidden_layers} layers"
        lengths = (f"LM sequence per row, training: prompt {queries}+{prompt}+{target}={queries + prompt + target}, "
                   f"memvp {prompt}+{target}={prompt + target}; generation starts from {queries + prompt} / {prompt}")
    else:
        widths = f"d_model {text.d_model}, d_ff {text.d_ff}, {text.num_layers}+{text.num_decoder_layers} layers"
        lengths = (f"LM encoder sequence per row: prompt {queries}+{prompt}={queries + prompt}, memvp {prompt}; "
                   f"decoder: {target} targets in training")
    counts = {name: sum(p.numel() for p in params) for name, params in trainable.items()}
    print(f"\n{lm} ({text.model_type}: {widths}, {text.num_attention_heads} heads)")
    print(lengths)
    print(f"trainable parameters: prompt {counts['prompt']:,}, memvp {counts['memvp']:,}")
    print(f"{'':<28}{'prompt ms':>12}{'memvp ms':>12}{'prompt/memvp':>14}")
    for task, label in (("train", "train step"), ("generate", f"generate {options.new_tokens} tokens")):
        prompt_ms, memvp_ms = (statistics.median(timings[task, name]) * 1e3 for name in VARIANTS)
        print(f"{label:<28}{prompt_ms:>12.1f}{memvp_ms:>12.1f}{prompt_ms / memvp_ms:>13.2f}x")


if __name__ == "__main__":
    main()

"""Recorder cost per training step, measured side by side in one run.

Three copies of the same model train in lockstep (interleaved step by step in rotating order, so
machine noise hits all three alike): peft's ``update_and_allocate`` alone (the baseline), the recorder recording every
``deltaT`` steps (the default), and the recorder recording every step (the worst case). Prints
medians of the whole step and of the allocation call, and their ratios to the baseline.

    python perf/recorder_overhead.py --preset tiny
    python perf/recorder_overhead.py --preset real     # real Q-Former dims, small vision encoder and LM
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration, T5Config

from peft_hooks import AdaLoraSetup, BudgetRecorder, add_adalora
from runner.collate import InstructBlipCollator
from benchmarks.synthetic_vqa import generate_examples
from runner.tiny import build_tiny_instructblip, load_tiny_processor


def real_size_model(processor) -> InstructBlipForConditionalGeneration:
    """Real Q-Former dims (768 hidden, 3072 FFN, 12 layers, 32 queries, 1408-wide image features)."""
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
    torch.manual_seed(0)
    return InstructBlipForConditionalGeneration(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["tiny", "real"], default="tiny")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=None)
    options = parser.parse_args()
    batch_size = options.batch or (8 if options.preset == "tiny" else 2)
    torch.set_num_threads(2)

    setup = AdaLoraSetup(total_step=options.steps, tinit=5, tfinal=5, deltaT=5, init_r=12, target_r=4)
    processor = load_tiny_processor()
    batch = InstructBlipCollator(processor)(generate_examples(batch_size, seed=0))
    variants = {}
    for name in ("peft alone", "recorder every deltaT", "recorder every step"):
        base = build_tiny_instructblip(seed=0)[0] if options.preset == "tiny" else real_size_model(processor)
        model = add_adalora(base, setup, seed=0)
        recorder = None
        if name != "peft alone":
            recorder = BudgetRecorder(tempfile.mkdtemp(), record_every=1 if name.endswith("step") else None)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        variants[name] = dict(model=model, recorder=recorder, optimizer=optimizer, step=[], alloc=[])

    order = list(variants.values())
    for step in range(options.steps):
        for v in order[step % 3 :] + order[: step % 3]:  # rotate so no variant always runs first
            started = time.perf_counter()
            v["model"](**batch).loss.backward()
            v["optimizer"].step()
            alloc_started = time.perf_counter()
            if v["recorder"] is None:
                v["model"].base_model.update_and_allocate(step)
            else:
                v["recorder"].step(v["model"], step)
            finished = time.perf_counter()
            v["optimizer"].zero_grad()
            if step >= 3:  # skip warm-up steps
                v["step"].append(finished - started)
                v["alloc"].append(finished - alloc_started)
    for v in variants.values():
        if v["recorder"] is not None:
            v["recorder"].close()

    base = variants["peft alone"]
    base_step, base_alloc = statistics.median(base["step"]), statistics.median(base["alloc"])
    print(f"preset={options.preset} batch={batch_size} steps={options.steps} (medians over {len(base['step'])} steps)")
    print(f"{'variant':<24}{'step ms':>10}{'alloc ms':>10}{'step ratio':>12}{'extra ms':>10}{'extra % of step':>17}")
    for name, v in variants.items():
        step_ms, alloc_ms = statistics.median(v["step"]) * 1e3, statistics.median(v["alloc"]) * 1e3
        mean_extra = (statistics.fmean(v["alloc"]) - statistics.fmean(base["alloc"])) * 1e3
        print(
            f"{name:<24}{step_ms:>10.1f}{alloc_ms:>10.2f}{step_ms / (base_step * 1e3):>12.3f}"
            f"{mean_extra:>10.2f}{100 * mean_extra / (base_step * 1e3):>16.2f}%"
        )
    print(f"baseline: step {base_step * 1e3:.1f} ms, peft's update_and_allocate {base_alloc * 1e3:.2f} ms")


if __name__ == "__main__":
    main()

"""Evaluation with each benchmark's own metric.

Multiple choice (ScienceQA, IconQA): every option's full target text is scored by the LM's mean
negative log-likelihood per target token, and the option with the lowest wins. One rule for every
LM: the paper's code summed token losses for T5 and averaged them for LLaMA. Open questions
(VizWiz) and captions (Flickr30k) are generated and scored with the official metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from qformer_budget.benchmarks.metrics import caption_scores, multiple_choice_accuracy, vizwiz_accuracy

from .collate import IGNORE_INDEX, InstructBlipCollator


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def target_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor], decoder_only: bool) -> torch.Tensor:
    """Mean negative log-likelihood per target token of each row's labels."""
    labels = batch["labels"]
    logits = model(**batch).logits.float()
    if decoder_only:  # position t predicts token t + 1
        logits, labels = logits[:, :-1], labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none")
    counted = labels != IGNORE_INDEX
    return (nll * counted).sum(dim=1) / counted.sum(dim=1)


def rank_options(model, collator: InstructBlipCollator, examples, batch_size: int) -> list[int]:
    """Index of the most likely option of each multiple-choice example."""
    rows = [(i, e, option) for i, e in enumerate(examples) for option in e.choices]
    scores: list[list[float]] = [[] for _ in examples]
    for chunk in _batches(rows, batch_size):
        images = {i: example.load_image() for i, example, _ in chunk}
        batch = collator.encode([images[i] for i, _, _ in chunk], [e.prompt for _, e, _ in chunk], [o for _, _, o in chunk])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        for (i, _, _), value in zip(chunk, target_nll(model, batch, collator.decoder_only).tolist()):
            scores[i].append(value)
    return [min(range(len(s)), key=s.__getitem__) for s in scores]


@torch.no_grad()
def generate_answers(
    model, collator: InstructBlipCollator, examples, batch_size: int, max_new_tokens: int, num_beams: int
) -> list[str]:
    """Greedy (or beam) generation for open questions and captions."""
    answers = []
    for chunk in _batches(examples, batch_size):
        inputs = collator.encode_for_generation([e.load_image() for e in chunk], [e.prompt for e in chunk])
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False)
        if collator.decoder_only:  # a decoder-only LM returns the prompt followed by the new tokens
            output = output[:, inputs["input_ids"].shape[1] :]
        answers += [text.strip() for text in collator.tokenizer.batch_decode(output, skip_special_tokens=True)]
    return answers


def evaluate(
    model, collator: InstructBlipCollator, examples, batch_size: int = 16, max_new_tokens: int = 20, num_beams: int = 1
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """The benchmark's metrics and one prediction row per example."""
    if not examples:
        raise ValueError("no examples to evaluate")
    model.eval()
    kind = examples[0].kind
    if kind == "multiple_choice":
        predicted = rank_options(model, collator, examples, batch_size)
        metrics = {"accuracy": multiple_choice_accuracy(predicted, [e.answer_index for e in examples])}
        rows = [
            {"id": e.example_id, "prediction": e.choices[p], "predicted_index": p, "answer_index": e.answer_index}
            for e, p in zip(examples, predicted)
        ]
    else:
        answers = generate_answers(model, collator, examples, batch_size, max_new_tokens, num_beams)
        if kind == "open_vqa":
            metrics = {"vqa_accuracy": vizwiz_accuracy(answers, [e.references for e in examples])}
        else:
            metrics = caption_scores(
                {e.example_id: a for e, a in zip(examples, answers)}, {e.example_id: e.references for e in examples}
            )
        rows = [{"id": e.example_id, "prediction": a, "references": list(e.references)} for e, a in zip(examples, answers)]
    return metrics | {"examples": len(examples)}, rows

"""Tests for benchmarks.metrics against hand-computed values of the official metric definitions."""

import math
import shutil
import warnings

import numpy as np
import pytest

from qformer_budget.benchmarks import metrics
from qformer_budget.benchmarks.metrics import (
    caption_scores,
    multiple_choice_accuracy,
    normalize_vqa_answer,
    vizwiz_accuracy,
    vqa_accuracy,
)

HAS_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAS_JAVA, reason="java is needed for pycocoevalcap's PTBTokenizer")
TOKENIZERS = ["python", pytest.param("ptb", marks=needs_java)]


# --- VQA / VizWiz accuracy ---


def _answers(n_match: int, match: str = "dog", other: str = "cat") -> list[str]:
    return [match] * n_match + [other] * (10 - n_match)


@pytest.mark.parametrize(
    ("n_match", "expected"),
    [
        # With k of the 10 answers matching, leaving out a matching annotator leaves k-1 matches
        # (k subsets), leaving out another one leaves k (10-k subsets):
        #   acc = (k * min(1, (k-1)/3) + (10-k) * min(1, k/3)) / 10
        (10, 1.0),  # (10 * min(1, 9/3)) / 10 = 1
        (4, 1.0),  # (4 * min(1, 3/3) + 6 * min(1, 4/3)) / 10 = (4 + 6) / 10 = 1
        # Identical strings are distinct annotators: leaving out one "dog" removes only that one
        # (filtering "answer != left-out answer" would leave 0 matches in 3 subsets and give 0.7).
        (3, 0.9),  # (3 * 2/3 + 7 * 3/3) / 10 = (2 + 7) / 10 = 0.9, not 1 although 3 agree
        (2, 0.6),  # (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6 / 10 = 0.6
        (1, 0.3),  # (1 * 0/3 + 9 * 1/3) / 10 = 3 / 10 = 0.3
        (0, 0.0),
    ],
)
def test_vqa_accuracy_leave_one_out(n_match: int, expected: float) -> None:
    assert vqa_accuracy("dog", _answers(n_match)) == pytest.approx(expected, abs=1e-12)


def test_vqa_accuracy_with_fewer_than_ten_answers() -> None:
    # 3 answers, all "dog": each of the 3 leave-one-out subsets has 2 matches -> 2/3 each -> mean 2/3.
    assert vqa_accuracy("dog", ["dog", "dog", "dog"]) == pytest.approx(2 / 3)
    # A single answer leaves an empty subset: 0 even when it matches, as in the official code.
    assert vqa_accuracy("dog", ["dog"]) == 0.0


def test_vqa_accuracy_normalises_prediction_and_answers() -> None:
    assert vqa_accuracy("Two", ["2"] * 10) == 1.0
    assert vqa_accuracy("2", ["two"] * 10) == 1.0
    assert vqa_accuracy("a dog.", ["dog"] * 10) == 1.0
    assert vqa_accuracy("The Dog!", ["a dog"] * 2 + ["cat"] * 8) == pytest.approx(0.6)
    assert vqa_accuracy("isnt", ["isnt"] * 10) == 1.0
    assert vqa_accuracy("yes", ["no"] * 10) == 0.0


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("Two", "2"),
        ("ten", "10"),
        ("none", "0"),  # number-word table maps "none" to "0"
        ("a dog.", "dog"),
        ("An Apple", "apple"),
        ("the red, white car", "red white car"),  # ", " present: the comma is deleted
        ("black/white", "black white"),  # "/" touches no space: it becomes a space
        ("yes!", "yes"),
        ("yes?", "yes"),
        ("Yes.", "yes"),
        ("1,000", "1000"),  # digit-comma-digit: punctuation deleted, not spaced
        ("3.5", "3.5"),  # a period followed by a digit stays
        ("e.g.", "eg"),
        ("\tno\n", "no"),
        ("isnt", "isn\u2019t"),  # the official table uses a curly apostrophe here
        ("dont", "don\u2019t"),
        ("cant", "can't"),  # ... and a straight one here
        ("isn't", "isn't"),  # "'" is not in the current punctuation list: unchanged
        ("." * 40, "." * 8),  # re.UNICODE (32) passed as ``count`` by the official code
    ],
)
def test_normalize_vqa_answer(raw: str, normalised: str) -> None:
    assert normalize_vqa_answer(raw) == normalised


def test_vqa_accuracy_rejects_empty_or_str_answers() -> None:
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("dog", [])
    with pytest.raises(TypeError, match="not a single str"):
        vqa_accuracy("dog", "dog")


def test_vizwiz_accuracy_is_mean_of_question_accuracies() -> None:
    predictions = ["2", "dog", "cat"]
    answers = [["two"] * 10, _answers(2), _answers(0, other="bird")]
    # (1.0 + 0.6 + 0.0) / 3
    assert vizwiz_accuracy(predictions, answers) == pytest.approx(1.6 / 3)


def test_vizwiz_accuracy_length_mismatch_names_both_lengths() -> None:
    with pytest.raises(ValueError, match=r"2 predictions but 3 answer lists"):
        vizwiz_accuracy(["a", "b"], [["a"]] * 3)


def test_multiple_choice_accuracy() -> None:
    assert multiple_choice_accuracy([0, 1, 2, 3], [0, 1, 3, 3]) == 0.75
    assert multiple_choice_accuracy(np.array([2, 2]), [2, 2]) == 1.0
    with pytest.raises(ValueError, match=r"3 predictions but 2 correct"):
        multiple_choice_accuracy([0, 1, 2], [0, 1])


# --- Captioning: CIDEr-D and BLEU-4 ---


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_cider_hand_computed_two_image_corpus(tokenizer: str) -> None:
    # CIDEr-D as pycocoevalcap computes it (cider_scorer.py), N = 2 images:
    #   weight of n-gram g in a sentence = count(g) * (log N - log max(1, df(g))),
    #   df(g) = number of images whose references contain g. "a" is in both images' references:
    #   idf = log 2 - log 2 = 0. Every other n-gram here is in one image's references: idf = log 2,
    #   a common factor that cancels in the cosine, so weights below are plain counts, "a" dropped.
    #   sim_n(h, r) = sum_g min(h_g, r_g) * r_g / (|h_n| |r_n|) * exp(-(len_h - len_r)^2 / (2 * 6^2))
    #   (0 when a sentence has no n-gram of order n); image score = 10 * mean_n(sum_refs sim_n) / #refs.
    # p = exp(-1 / 72) is the length penalty for a length difference of 1 word.
    # Image 1, hypothesis "a dog runs":
    #   ref "a dog runs": identical -> sim = 1, 1, 1 for n = 1..3; no 4-gram -> 0.
    #   ref "a dog plays fetch": n=1 h={dog,runs} r={dog,plays,fetch}: 1/(sqrt2*sqrt3) = 1/sqrt6;
    #     n=2 h={a dog, dog runs} r={a dog, dog plays, plays fetch}: 1/sqrt6; n=3,4: no overlap -> 0;
    #     lengths 3 vs 4 -> times p.
    #   score1 = 10 * ((1 + p/sqrt6) + (1 + p/sqrt6) + 1 + 0) / 4 / 2
    # Image 2, hypothesis "a cat", ref "a cat sleeps":
    #   n=1 h={cat} r={cat,sleeps}: 1/sqrt2; n=2 h={a cat} r={a cat, cat sleeps}: 1/sqrt2; n=3,4: 0;
    #   lengths 2 vs 3 -> times p.   score2 = 10 * (p/sqrt2 + p/sqrt2) / 4 / 1
    p = math.exp(-1 / 72)
    score1 = 10 * (2 * (1 + p / math.sqrt(6)) + 1) / 4 / 2
    score2 = 10 * (2 * p / math.sqrt(2)) / 4
    expected = (score1 + score2) / 2  # = 4.1217 (unscaled CIDEr)
    scores = caption_scores(
        {"img1": "A dog runs.", "img2": "A cat"},
        {"img1": ["a dog runs", "A dog plays fetch."], "img2": ["a cat sleeps"]},
        tokenizer=tokenizer,
    )
    assert scores["CIDEr"] == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(4.1217, abs=1e-4)


@pytest.mark.parametrize("tokenizer", TOKENIZERS)
def test_bleu4_hand_computed(tokenizer: str) -> None:
    # Candidate identical to one reference: all clipped n-gram precisions 1, the closest reference
    # length equals the candidate's (6 vs 6 and 2) -> no brevity penalty -> BLEU-4 = 1.
    identical = caption_scores(
        {"x": "a man rides a red bike", "y": "a dog"},
        {"x": ["a man rides a red bike", "someone cycling"], "y": ["a dog", "a dog sleeping"]},
        tokenizer=tokenizer,
    )
    assert identical["BLEU-4"] == pytest.approx(1.0, abs=1e-6)

    # Brevity penalty: 5-word candidate whose n-grams all occur in the 8-word reference:
    # precisions 5/5, 4/4, 3/3, 2/2 = 1; BP = exp(1 - 8/5) = exp(-0.6) = 0.5488.
    short = caption_scores(
        {"x": "a man rides a bike"}, {"x": ["a man rides a bike down the hill"]}, tokenizer=tokenizer
    )
    assert short["BLEU-4"] == pytest.approx(math.exp(-0.6), rel=1e-6)

    # Corpus level: clipped matches and candidate n-grams are summed over images before the ratio.
    #   img1 "a dog runs fast" vs "a dog runs slowly": 1-grams 3/4, 2-grams 2/3, 3-grams 1/2, 4-grams 0/1
    #   img2 identical 6-word caption:                 6/6, 5/5, 4/4, 3/3
    #   corpus: 9/10, 7/8, 5/6, 3/4; lengths 10 vs 10 -> BP 1.
    #   BLEU-4 = (9/10 * 7/8 * 5/6 * 3/4) ** (1/4) = (945/1920) ** 0.25 = 0.8376
    # (averaging sentence BLEU-4 instead would give about 0.5, since img1 has no matching 4-gram).
    corpus = caption_scores(
        {"1": "a dog runs fast", "2": "the cat sat on the mat"},
        {"1": ["a dog runs slowly"], "2": ["the cat sat on the mat"]},
        tokenizer=tokenizer,
    )
    assert corpus["BLEU-4"] == pytest.approx((945 / 1920) ** 0.25, rel=1e-6)


def test_python_tokenizer_reproduces_ptb_conventions() -> None:
    tokens = metrics._tokenize_python(
        {"a": ["A man's dog, (left) don't run...", 'He said: "it\u2019s 3:30 at the U.S. border."']}
    )
    # Lower-cased, clitics split ('s, n't), brackets become -lrb-/-rrb- (kept: COCO's drop list has the
    # upper-case forms), punctuation tokens dropped, "3:30" and abbreviations kept whole.
    assert tokens == {
        "a": ["a man 's dog -lrb- left -rrb- do n't run", "he said it 's 3:30 at the u.s. border"]
    }


@needs_java
def test_python_and_ptb_tokenizers_agree() -> None:
    captions = {
        "plain": [
            "a group of people standing around a table with food on it",
            "two young guys with shaggy hair look at their hands while hanging out in the yard .",
            "a little girl , in a pink dress , is climbing up stairs .",
        ],
        "mixed": [
            "A black-and-white dog's toy, on a red mat.",
            "The kids don't like it; they can't wait...",
            "It's a man (with a hat) and a woman's bag?",
            'A sign that says "STOP" near 3.5 km and 1,000 people.',
            "A man/woman at the U.S. border, Mr. Smith's car -- at 3:30 p.m.",
            "\u201cSmart quotes\u201d and it\u2019s a dogs' toy!!",
        ],
    }
    assert metrics._tokenize_python(captions) == metrics._tokenize_ptb(captions)


def test_auto_tokenizer_falls_back_to_python_with_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
    with pytest.warns(UserWarning, match="java not found"):
        scores = caption_scores({"x": "a man rides a bike"}, {"x": ["a man rides a bike down the hill"]})
    assert scores["BLEU-4"] == pytest.approx(math.exp(-0.6), rel=1e-6)


@needs_java
def test_auto_tokenizer_uses_ptb_silently_when_java_present() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        caption_scores({"x": "a dog"}, {"x": ["a dog"]}, tokenizer="auto")


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        ({"a": "a dog"}, {"a": ["a dog"], "b": ["a cat"]}, r"no prediction for \['b'\]"),
        ({"a": "a dog", "c": "a cat"}, {"a": ["a dog"]}, r"no references for \['c'\]"),
        ({"a": "a dog", "b": "  "}, {"a": ["a dog"], "b": ["a cat"]}, r"empty prediction for image id 'b'"),
        ({"a": "a dog", "b": "a cat"}, {"a": ["a dog"], "b": []}, r"image id 'b' has no reference"),
        ({"a": "a dog"}, {"a": ["a dog", ""]}, r"image id 'a' has an empty reference"),
        ({"a": "a dog"}, {"a": "a dog"}, r"references for image id 'a' must be a list"),
        ({}, {}, r"no predictions"),
    ],
)
def test_caption_scores_rejects_bad_input(predictions: dict, references: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        caption_scores(predictions, references, tokenizer="python")


def test_caption_scores_rejects_unknown_tokenizer() -> None:
    with pytest.raises(ValueError, match="tokenizer must be"):
        caption_scores({"a": "a dog"}, {"a": ["a dog"]}, tokenizer="spacy")

"""Scoring functions for the four benchmarks, reproducing their official evaluation code.

- **VQA accuracy** (VizWiz, open answers): the predicted answer and the human answers are normalised
  (:func:`normalize_vqa_answer`); for each of the ``n`` leave-one-annotator-out subsets of the ``n``
  human answers (``n = 10`` in VizWiz) the score is ``min(#answers in the subset equal to the
  prediction / 3, 1)``, and the question's accuracy is the mean over the subsets. Source:
  GT-Vision-Lab/VQA ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (``processPunctuation``,
  ``processDigitArticle``, ``evaluate``) and the VizWiz-VQA API's ``vqaEval.py`` (Qing Li), which uses
  the same normalisation and leaves annotators out by index. The official scripts normalise only the
  prediction and compare it with the annotation file's answers as stored; we normalise both sides so
  that raw annotator answers ("Two", "a dog.") match too.
- **Multiple-choice accuracy** (ScienceQA, IconQA): fraction of questions whose chosen option index
  equals the correct one.
- **CIDEr and BLEU-4** (Flickr30k captioning): the COCO caption evaluation, tylin/coco-caption,
  packaged on PyPI as ``pycocoevalcap`` (salaniz/pycocoevalcap). Captions are tokenised with the Stanford
  PTBTokenizer (lower-cased, punctuation tokens dropped), then scored on the whole corpus: ``Cider()``
  is CIDEr-D (tf-idf n-gram vectors for n = 1..4 with idf over the evaluated images' references,
  clipped cosine similarity, Gaussian length penalty with sigma = 6, times 10, averaged over references
  then images); ``Bleu(4)`` is corpus BLEU-4 (clipped n-gram counts summed over the corpus, brevity
  penalty from the closest reference length). Scores are returned unscaled (papers often print x100).
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Mapping, Sequence

import numpy as np

# --- VQA answer normalisation: tables of GT-Vision-Lab/VQA vqaEval.py (current version, which the
# VizWiz API shares), kept as they are, including their mix of straight and curly apostrophes. ---

_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn’t’ve", "couldnt’ve": "couldn’t’ve", "didnt": "didn’t", "doesnt": "doesn’t",
    "dont": "don’t", "hadnt": "hadn’t", "hadnt’ve": "hadn’t’ve", "hadn'tve": "hadn’t’ve",
    "hasnt": "hasn’t", "havent": "haven’t", "hed": "he’d", "hed’ve": "he’d’ve", "he’dve": "he’d’ve",
    "hes": "he’s", "howd": "how’d", "howll": "how’ll", "hows": "how’s", "Id’ve": "I’d’ve",
    "I’dve": "I’d’ve", "Im": "I’m", "Ive": "I’ve", "isnt": "isn’t", "itd": "it’d", "itd’ve": "it’d’ve",
    "it’dve": "it’d’ve", "itll": "it’ll", "let’s": "let’s", "maam": "ma’am", "mightnt": "mightn’t",
    "mightnt’ve": "mightn’t’ve", "mightn’tve": "mightn’t’ve", "mightve": "might’ve",
    "mustnt": "mustn’t", "mustve": "must’ve", "neednt": "needn’t", "notve": "not’ve",
    "oclock": "o’clock", "oughtnt": "oughtn’t", "ow’s’at": "’ow’s’at", "’ows’at": "’ow’s’at",
    "’ow’sat": "’ow’s’at", "shant": "shan’t", "shed’ve": "she’d’ve", "she’dve": "she’d’ve",
    "she’s": "she’s", "shouldve": "should’ve", "shouldnt": "shouldn’t", "shouldnt’ve": "shouldn’t’ve",
    "shouldn’tve": "shouldn’t’ve", "somebody’d": "somebodyd", "somebodyd’ve": "somebody’d’ve",
    "somebody’dve": "somebody’d’ve", "somebodyll": "somebody’ll", "somebodys": "somebody’s",
    "someoned": "someone’d", "someoned’ve": "someone’d’ve", "someone’dve": "someone’d’ve",
    "someonell": "someone’ll", "someones": "someone’s", "somethingd": "something’d",
    "somethingd’ve": "something’d’ve", "something’dve": "something’d’ve",
    "somethingll": "something’ll", "thats": "that’s", "thered": "there’d", "thered’ve": "there’d’ve",
    "there’dve": "there’d’ve", "therere": "there’re", "theres": "there’s", "theyd": "they’d",
    "theyd’ve": "they’d’ve", "they’dve": "they’d’ve", "theyll": "they’ll", "theyre": "they’re",
    "theyve": "they’ve", "twas": "’twas", "wasnt": "wasn’t", "wed’ve": "we’d’ve", "we’dve": "we’d’ve",
    "weve": "we've", "werent": "weren’t", "whatll": "what’ll", "whatre": "what’re", "whats": "what’s",
    "whatve": "what’ve", "whens": "when’s", "whered": "where’d", "wheres": "where's",
    "whereve": "where’ve", "whod": "who’d", "whod’ve": "who’d’ve", "who’dve": "who’d’ve",
    "wholl": "who’ll", "whos": "who’s", "whove": "who've", "whyll": "why’ll", "whyre": "why’re",
    "whys": "why’s", "wont": "won’t", "wouldve": "would’ve", "wouldnt": "wouldn’t",
    "wouldnt’ve": "wouldn’t’ve", "wouldn’tve": "wouldn’t’ve", "yall": "y’all", "yall’ll": "y’all’ll",
    "y’allll": "y’all’ll", "yall’d’ve": "y’all’d’ve", "y’alld’ve": "y’all’d’ve",
    "y’all’dve": "y’all’d’ve", "youd": "you’d", "youd’ve": "you’d’ve", "you’dve": "you’d’ve",
    "youll": "you’ll", "youre": "you’re", "youve": "you’ve",
}
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
                ">", "<", "@", "`", ",", "?", "!")
# The official pattern: "(?!<=" is a typo for a look-behind, so it strips every period not followed by
# a digit ("3.5" keeps its period, "dog." loses it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# The official code passes re.UNICODE (= 32) as re.sub's positional ``count``: at most 32 periods go.
_PERIOD_STRIP_COUNT = 32


def normalize_vqa_answer(answer: str) -> str:
    """Normalise an answer as the official VQA / VizWiz evaluation does, so equal answers compare equal.

    Steps: newlines and tabs become spaces and the ends are stripped; punctuation marks are deleted
    where they touch a space (or anywhere if the answer holds a digit-comma-digit group like
    "1,000"), otherwise replaced by a space; periods not followed by a digit are deleted; then the
    answer is lower-cased, number words become digits ("two" -> "2", "none" -> "0"), the articles
    a/an/the are dropped and apostrophe-less contractions get their apostrophe ("isnt" -> "isn’t").
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    keep_no_space = _COMMA_BETWEEN_DIGITS.search(text) is not None
    out = text
    for p in _PUNCTUATION:
        if keep_no_space or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    out = _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)
    words = [_NUMBER_WORDS.get(w, w) for w in out.lower().split()]
    words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQA accuracy of one prediction against the human answers of one question, in [0, 1].

    Mean over the ``len(answers)`` leave-one-annotator-out subsets of ``min(matches in subset / 3, 1)``
    after normalisation: 3 or more agreeing annotators give 1, 2 give 0.6, 1 gives 0.3 (with 10 answers).
    Annotators are left out by position, so repeated answers each count.
    """
    if isinstance(answers, str):
        raise TypeError("answers must be a sequence of answer strings, not a single str")
    if len(answers) == 0:
        raise ValueError("vqa_accuracy needs at least one human answer; got an empty answers list")
    pred = normalize_vqa_answer(prediction)
    matches = [normalize_vqa_answer(a) == pred for a in answers]
    total = sum(matches)
    # Leaving out annotator i removes one match if i agreed with the prediction.
    per_subset = [min(1.0, (total - m) / 3.0) for m in matches]
    return float(np.mean(per_subset))


def vizwiz_accuracy(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> float:
    """Mean :func:`vqa_accuracy` over questions (the VizWiz-VQA "overall" accuracy, as a fraction)."""
    if len(predictions) != len(answers):
        raise ValueError(
            f"vizwiz_accuracy: {len(predictions)} predictions but {len(answers)} answer lists; "
            "they must pair up one to one"
        )
    if len(predictions) == 0:
        raise ValueError("vizwiz_accuracy: no questions to score")
    return float(np.mean([vqa_accuracy(p, a) for p, a in zip(predictions, answers)]))


def multiple_choice_accuracy(predicted: Sequence[int], correct: Sequence[int]) -> float:
    """Fraction of questions whose predicted option index equals the correct one (ScienceQA, IconQA)."""
    if len(predicted) != len(correct):
        raise ValueError(
            f"multiple_choice_accuracy: {len(predicted)} predictions but {len(correct)} correct answers"
        )
    if len(predicted) == 0:
        raise ValueError("multiple_choice_accuracy: no questions to score")
    return float(np.mean(np.asarray(predicted) == np.asarray(correct)))


# --- Caption tokenisation ---

# Python stand-in for Stanford PTBTokenizer (CoreNLP 3.4.1, ``-preserveLines -lowerCase``) on plain
# English: these abbreviations keep their period, as single letters and dotted initialisms do.
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "mt", "co", "inc", "ltd", "corp", "etc", "vs",
    "ave", "gen", "col", "capt", "sgt", "lt", "rev", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
    "sep", "sept", "oct", "nov", "dec",
})
_CLITICS = ("n't", "'s", "'m", "'d", "'re", "'ve", "'ll")
# Tokens whose edge hyphens or quotes belong to them: bracket tokens, "'n'", decades like "'90s".
_KEEP_WHOLE = re.compile(r"-[lr][rsc]b-|'n'|'\d0s")
_SPLIT_WORDS = {"cannot": ["can", "not"], "gonna": ["gon", "na"], "wanna": ["wan", "na"],
                "gotta": ["got", "ta"]}
# (pattern, replacement) applied in order to the lower-cased caption; each emits the PTB token.
_PTB_SUBSTITUTIONS = [
    (re.compile(r"[‘’]"), "'"),
    (re.compile(r"`"), " ` "),
    (re.compile(r"[“”\"]"), " '' "),
    (re.compile(r"\("), " -lrb- "), (re.compile(r"\)"), " -rrb- "),
    (re.compile(r"\["), " -lsb- "), (re.compile(r"\]"), " -rsb- "),
    (re.compile(r"\{"), " -lcb- "), (re.compile(r"\}"), " -rcb- "),
    (re.compile(r"(?<!\d),|,(?!\d)"), " , "),
    (re.compile(r";"), " ; "),
    (re.compile(r"(?<!\d):|:(?!\d)"), " : "),
    (re.compile(r"[!?]+"), r" \g<0> "),
    (re.compile(r"\.{2,}|…"), " ... "),
    (re.compile(r"-{2,}|[–—]"), " -- "),
    (re.compile(r"%"), " % "),
    (re.compile(r"\$"), " $ "),
    (re.compile(r"#(?=\d)"), " # "),
]


def _ptb_split_word(word: str) -> list[str]:
    """Split one whitespace-free chunk into PTB tokens: edge hyphens/quotes, final period, clitics."""
    head: list[str] = []
    tail: list[str] = []
    while word:
        if word in _CLITICS or _KEEP_WHOLE.fullmatch(word):
            break
        if len(word) > 1 and word[0] in "-'":
            head.append(word[0])
            word = word[1:]
        elif len(word) > 1 and word[-1] in "-'":
            tail.insert(0, word[-1])
            word = word[:-1]
        elif len(word) > 1 and word.endswith(".") and not _keeps_period(word):
            tail.insert(0, ".")
            word = word[:-1]
        else:
            break
    clitics: list[str] = []
    while suffix := next((c for c in _CLITICS if word.endswith(c) and len(word) > len(c)), None):
        clitics.insert(0, suffix)
        word = word[: -len(suffix)]
    return head + _SPLIT_WORDS.get(word, [word]) + clitics + tail


def _keeps_period(word: str) -> bool:
    """Whether PTBTokenizer keeps a word's final period: abbreviations like "mr.", "a.m.", "z."."""
    return word[:-1] in _ABBREVIATIONS or re.fullmatch(r"(?:[a-z]\.)+", word) is not None


def _tokenize_python(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Pure-Python PTB-style tokenisation, then removal of the punctuation tokens COCO drops."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS

    dropped = set(PUNCTUATIONS)
    out: dict[str, list[str]] = {}
    for key, caps in captions.items():
        out[key] = []
        for caption in caps:
            text = caption.lower()
            for pattern, replacement in _PTB_SUBSTITUTIONS:
                text = pattern.sub(replacement, text)
            tokens = [t for chunk in text.split() for t in _ptb_split_word(chunk)]
            out[key].append(" ".join(t for t in tokens if t not in dropped))
    return out


def _tokenize_ptb(captions: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Official tokenisation: pycocoevalcap's PTBTokenizer (runs Stanford CoreNLP 3.4.1 under Java)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({k: [{"caption": c} for c in caps] for k, caps in captions.items()})


def _resolve_tokenizer(tokenizer: str) -> str:
    """Map "auto" to "ptb" when Java is available, else to "python" with a warning."""
    if tokenizer not in ("auto", "ptb", "python"):
        raise ValueError(f"tokenizer must be 'auto', 'ptb' or 'python', not {tokenizer!r}")
    if tokenizer != "auto":
        return tokenizer
    if shutil.which("java") is not None:
        return "ptb"
    warnings.warn(
        "java not found on PATH: tokenising captions with the pure-Python PTB stand-in; CIDEr/BLEU "
        "may differ slightly from the official (Java PTBTokenizer) scores",
        stacklevel=3,
    )
    return "python"


def _check_captions(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> None:
    """Reject inputs the COCO scorers would mis-score or crash on, naming the offending image ids."""
    if not predictions:
        raise ValueError("caption_scores: no predictions to score")
    missing = sorted(set(references) - set(predictions), key=str)
    extra = sorted(set(predictions) - set(references), key=str)
    if missing or extra:
        raise ValueError(
            "caption_scores: prediction and reference ids differ; "
            f"no prediction for {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"no references for {extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )
    for key, caption in predictions.items():
        if not caption.strip():
            raise ValueError(f"caption_scores: empty prediction for image id {key!r}")
    for key, refs in references.items():
        if isinstance(refs, str):
            raise ValueError(f"caption_scores: references for image id {key!r} must be a list of captions")
        if len(refs) == 0:
            raise ValueError(f"caption_scores: image id {key!r} has no reference caption")
        if any(not r.strip() for r in refs):
            raise ValueError(f"caption_scores: image id {key!r} has an empty reference caption")


def caption_scores(
    predictions: Mapping[str, str],
    references: Mapping[str, Sequence[str]],
    tokenizer: str = "auto",
) -> dict[str, float]:
    """Corpus-level CIDEr (CIDEr-D) and BLEU-4 of one generated caption per image, as COCO computes them.

    ``predictions`` maps image id -> caption, ``references`` image id -> human captions; the id sets must
    match. ``tokenizer``: "ptb" (official, needs ``java``), "python" (pure-Python stand-in that matches
    PTBTokenizer on plain English captions) or "auto" ("ptb" if ``java`` is on PATH, else "python" with a
    warning). CIDEr's idf comes from the evaluated images' references, so it is only comparable between
    runs scored on the same image set.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    _check_captions(predictions, references)
    # Collapse whitespace: a line break inside a caption would shift the PTBTokenizer's line alignment.
    res_raw = {k: [" ".join(predictions[k].split())] for k in references}
    gts_raw = {k: [" ".join(r.split()) for r in refs] for k, refs in references.items()}
    tokenize = _tokenize_ptb if _resolve_tokenizer(tokenizer) == "ptb" else _tokenize_python
    gts, res = tokenize(gts_raw), tokenize(res_raw)
    cider, _ = Cider().compute_score(gts, res)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {"CIDEr": float(cider), "BLEU-4": float(bleu[3])}

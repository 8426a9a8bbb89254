"""T2I-CompBench's attribute-binding score (Huang et al. 2023, ``BLIPvqa_eval`` of the released code): BLIP-VQA
asked whether each noun phrase of the prompt is in the image.

For a prompt P with spaCy noun chunks n₁ … n_k (``en_core_web_sm`` in the released code; the first
``max_phrases`` = 8 are asked):

1. question q_j = ``f"{n_j}?"``, normalised as BLIP's ``pre_question`` does (lower case; ``. ! " ( ) * # : ; ~``
   removed; trailing spaces removed; at most 50 words); "a green bench?" for "a green bench and a blue bowl";
2. BLIP-VQA encodes the image and the question (its first token replaced by ``[ENC]``), and its answer decoder,
   started from ``[DEC]``, gives the first answer token's distribution p; the answer is

       P_j(yes) = p("yes") / (p("yes") + p("no")),   written with 4 decimals as released;

3. the image's score is the product ``S = Π_j P_j(yes)`` (1 for a prompt with no noun chunk), written with 4
   decimals as released.

The benchmark's number is the mean of S over its images. The same procedure scores the ``color``, ``shape`` and
``texture`` categories; :func:`compbench_prompts` reads their prompt files (the ``val`` split has 300 prompts each).

Model as released: BLIP base fine-tuned for VQA on CapFilt-Large data at 480 px
(``model_base_vqa_capfilt_large.pth``), which is ``Salesforce/blip-vqa-capfilt-large`` on the hub
(``Salesforce/blip-vqa-base`` is the 384 px checkpoint trained without CapFilt-Large, and gives other numbers).

Examples::

    >>> vqa_question("a green bench")
    'a green bench?'
    >>> vqa_question('The "Red" Apple!')
    'the red apple?'
    >>> binding_score([0.9, 0.5])
    0.45
    >>> binding_score([0.12345])            # each answer kept with 4 decimals, as released
    0.1235
"""

from __future__ import annotations

import functools
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..errors import BadOption, NotFoundError
from ..parse import load_spacy
from ._common import ImageScorer, load_pretrained, model_device, model_dtype, resolve_input

VQA_MODEL = "Salesforce/blip-vqa-capfilt-large"
CATEGORIES = ("color", "shape", "texture")
SPLITS = ("train", "val")
MAX_PHRASES = 8
#: where the T2I-CompBench prompt files are looked for, after ``$ATTNLENS_DATASETS/t2i-compbench``
DATASET_DIRS = ("../shared/datasets/t2i-compbench", "../../shared/datasets/t2i-compbench")

_DROP = re.compile(r"""[.!"()*#:;~]""")


def vqa_question(phrase: str, max_words: int = 50) -> str:
    """``f"{phrase}?"`` normalised as BLIP's ``pre_question`` (module docstring)."""
    q = _DROP.sub("", f"{phrase}?".lower()).rstrip(" ")
    words = q.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else q


def noun_phrases(prompt: str, nlp) -> list[str]:
    """The text of each spaCy noun chunk of ``prompt``, in order."""
    return [chunk.text for chunk in nlp(prompt).noun_chunks]


def binding_score(yes_probabilities: Sequence[float], decimals: int | None = 4) -> float:
    """``round(Π_j round(P_j(yes), decimals), decimals)``: the released code writes each answer, and then each
    image's product, with 4 decimals (no rounding when ``decimals`` is None); 1.0 for no questions."""
    def rounded(x: float) -> float:
        return float(x) if decimals is None else float(f"{float(x):.{decimals}f}")

    out = 1.0
    for p in yes_probabilities:
        out *= rounded(p)
    return rounded(out)


def yes_probability_from_logits(logits: torch.Tensor, yes_id: int, no_id: int) -> torch.Tensor:
    """``softmax(logits)[yes] / (softmax(logits)[yes] + softmax(logits)[no])`` for each row.

    Shapes: ``(n, vocab)`` → ``(n,)``."""
    p = torch.softmax(logits.float(), dim=-1)
    return p[:, yes_id] / (p[:, yes_id] + p[:, no_id])


def load_vqa(model_id: str = VQA_MODEL, device=None, dtype=None):
    """``(BlipForQuestionAnswering, BlipProcessor)`` from a hub id, a folder or ``attnlens-tiny-blip-vqa``."""
    from transformers import BlipForQuestionAnswering, BlipProcessor

    return load_pretrained(BlipForQuestionAnswering, BlipProcessor, model_id, device, dtype)


def _token_id(tokenizer, token: str, fallback: int) -> int:
    i = tokenizer.convert_tokens_to_ids(token)
    return fallback if i is None or i == tokenizer.unk_token_id else int(i)


@torch.no_grad()
def vqa_yes_probabilities(model, processor, image, questions: Sequence[str]) -> list[float]:
    """P(yes) (module docstring, step 2) of each question about ``image``, in one batch.

    ``[ENC]`` is the tokenizer's token of that name, else id ``vocab_size − 1`` (BLIP appends ``[DEC]`` then
    ``[ENC]`` to BERT's vocabulary); ``[DEC]`` is the text config's ``bos_token_id``."""
    if not questions:
        return []
    tok = processor.tokenizer
    text_cfg = model.config.text_config
    device = model_device(model)
    pixels = processor(images=[image] * len(questions), return_tensors="pt")["pixel_values"]
    enc = tok(list(questions), padding="longest", truncation=True, max_length=35, return_tensors="pt")
    ids = enc["input_ids"].clone()
    ids[:, 0] = _token_id(tok, "[ENC]", text_cfg.vocab_size - 1)
    mask = enc["attention_mask"].to(device)
    image_embeds = model.vision_model(pixel_values=pixels.to(device, model_dtype(model)))[0]
    image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=device)
    q = model.text_encoder(input_ids=ids.to(device), attention_mask=mask, encoder_hidden_states=image_embeds,
                           encoder_attention_mask=image_mask, return_dict=False)[0]
    start = torch.full((len(questions), 1), text_cfg.bos_token_id, dtype=torch.long, device=device)
    logits = model.text_decoder(input_ids=start, encoder_hidden_states=q, encoder_attention_mask=mask,
                                return_dict=True).logits[:, 0, :]
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    return [float(p) for p in yes_probability_from_logits(logits, yes, no)]


def dataset_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder of T2I-CompBench's prompt files: ``root``, else ``$ATTNLENS_DATASETS/t2i-compbench``, else
    ``../shared/datasets/t2i-compbench`` beside the attnlens checkout (where CI puts it).

    Raises:
        NotFoundError: none of them holds ``color_val.txt``.
    """
    here = Path(__file__).resolve().parents[2]
    candidates = [Path(root)] if root is not None else (
        ([Path(os.environ["ATTNLENS_DATASETS"]) / "t2i-compbench"] if os.environ.get("ATTNLENS_DATASETS") else [])
        + [(here / d).resolve() for d in DATASET_DIRS])
    for c in candidates:
        if (c / "color_val.txt").is_file():
            return c
    raise NotFoundError(f"T2I-CompBench prompt files not found (looked in {', '.join(str(c) for c in candidates)})",
                        hint="set ATTNLENS_DATASETS to the folder holding t2i-compbench/color_val.txt (the files of "
                             "github.com/Karine-Huang/T2I-CompBench examples/dataset)")


def compbench_prompts(category: str, split: str = "val", root: str | os.PathLike | None = None) -> list[str]:
    """The prompts of a T2I-CompBench attribute-binding category (``color``, ``shape``, ``texture``) and split
    (``train``, ``val``), one per non-empty line of ``<category>_<split>.txt``."""
    if category not in CATEGORIES:
        raise BadOption(f"unknown T2I-CompBench category '{category}'", hint=f"choose from {', '.join(CATEGORIES)}")
    if split not in SPLITS:
        raise BadOption(f"unknown T2I-CompBench split '{split}'", hint=f"choose from {', '.join(SPLITS)}")
    path = dataset_dir(root) / f"{category}_{split}.txt"
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class CompBenchVqaScorer(ImageScorer):
    """``score(run_or_image, prompt) → {"compbench_vqa": S}`` (module docstring); the per-phrase answers of the
    last image are kept in ``last_answers`` (``[(question, P(yes)), ...]``).

    Args:
        model_id (`str`, *optional*, defaults to ``"Salesforce/blip-vqa-capfilt-large"``): hub id, folder or
            ``attnlens-tiny-blip-vqa``.
        spacy_model (`str`, *optional*): the noun-chunk parser (the protocol's is ``en_core_web_sm``; default: the
            first installed of attnlens's spaCy pipelines, :func:`attnlens.parse.load_spacy`).
        max_phrases (`int`, *optional*, defaults to 8): noun chunks asked about (the released ``--np_num``).
        model, processor: an already-loaded BLIP-VQA.
        vqa (`callable`, *optional*): ``vqa(image, questions) → [P(yes), ...]`` in place of BLIP-VQA (a stub in
            tests, another VQA model); then no model is loaded.
        nlp: an already-loaded spaCy pipeline.
    """

    name = "compbench-vqa"

    def __init__(self, model_id: str = VQA_MODEL, *, device=None, dtype=None, spacy_model: str | None = None,
                 max_phrases: int = MAX_PHRASES, model: Any = None, processor: Any = None, nlp: Any = None,
                 vqa: Callable[[Any, list[str]], Sequence[float]] | None = None):
        self.model_id, self.max_phrases = str(model_id), int(max_phrases)
        if vqa is None:
            if model is None or processor is None:
                model, processor = load_vqa(model_id, device, dtype)
            vqa = functools.partial(vqa_yes_probabilities, model, processor)
        self.vqa = vqa
        self.nlp = nlp if nlp is not None else load_spacy(spacy_model)
        self.last_answers: list[tuple[str, float]] = []

    def questions(self, prompt: str) -> list[str]:
        return [vqa_question(p) for p in noun_phrases(prompt, self.nlp)[: self.max_phrases]]

    def score(self, run_or_image, prompt: str | None = None) -> dict[str, float]:
        image, prompt = resolve_input(run_or_image, prompt)
        qs = self.questions(prompt)
        probs = [float(p) for p in self.vqa(image, qs)] if qs else []
        self.last_answers = list(zip(qs, probs))
        s = binding_score(probs)
        return {"compbench_vqa": s if math.isfinite(s) else math.nan}

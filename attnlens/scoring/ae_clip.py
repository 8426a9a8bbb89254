"""Attend-and-Excite's evaluation (Chefer et al. 2023, ``metrics/`` of the released code): CLIP image–text
similarity of the full prompt and of its two halves, and BLIP caption → CLIP text–text similarity.

**Prompt embedding.** The prompt is put into each of CLIP's 80 ImageNet templates (:data:`IMAGENET_TEMPLATES`,
"a bad photo of a {}." …); as released, the literal substrings ``"a a"`` and ``"the a"`` are then replaced by
``"a"`` (meant for "a photo of a a cat"; being plain substring replacements they also touch words, e.g.
"banana and" → "bananand", which the released numbers include). Each text is embedded by CLIP and normalised; the
prompt's embedding is the normalised mean::

    t(P) = normalise( (1/80) Σ_k normalise(E_T(template_k(P))) )

**Image–text similarities** (raw cosines, no ×100, no clamp), with ``v = normalise(E_I(image))``:

    full_text  = v · t(P)
    min_object = min(v · t(P₁), v · t(P₂))

where P₁, P₂ are the first two parts of P split on ``" and "`` (else on ``" with "``); a prompt with neither has no
halves (the released code skips it; here ``min_object`` is NaN).

**Text–text similarity.** BLIP (LAVIS ``blip_caption`` ``base_coco``: beam search, 3 beams, 10–30 tokens, the
prompt "a picture of " removed from the caption) captions the image; the caption C is embedded by CLIP without
templates: ``text_text = normalise(E_T(C)) · t(P)``.

Models as published: CLIP ViT-B/16 (``openai/clip-vit-base-patch16``) and BLIP base fine-tuned on COCO captions
(``Salesforce/blip-image-captioning-base``).

Examples::

    >>> split_prompt("a cat and a frog")
    ('a cat', 'a frog')
    >>> split_prompt("a bear with a bow")
    ('a bear', 'a bow')
    >>> split_prompt("a red crown") is None
    True
    >>> template_texts("a cat", IMAGENET_TEMPLATES[:2])
    ['a bad photo of a cat.', 'a photo of many a cat.']
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import torch

from ._common import ImageScorer, load_pretrained, model_device, model_dtype, resolve_input, unit
from .clip_score import encode_images, encode_texts, load_clip

CLIP_MODEL = "openai/clip-vit-base-patch16"
CAPTION_MODEL = "Salesforce/blip-image-captioning-base"
CAPTION_PROMPT = "a picture of "

#: CLIP's 80 prompt templates for ImageNet (Radford et al. 2021), the set A&E embeds each prompt with
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.", "a photo of the hard to see {}.",
    "a low resolution photo of the {}.", "a rendering of a {}.", "graffiti of a {}.", "a bad photo of the {}.",
    "a cropped photo of the {}.", "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.",
    "a drawing of a {}.", "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.",
    "a close-up photo of a {}.", "a black and white photo of the {}.", "a painting of the {}.",
    "a painting of a {}.", "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.", "a rendering of the {}.",
    "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.", "a close-up photo of the {}.",
    "a photo of a {}.", "the origami {}.", "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.",
    "a origami {}.", "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.", "a photo of a nice {}.",
    "a photo of a weird {}.", "a blurry photo of a {}.", "a cartoon {}.", "art of a {}.", "a sketch of the {}.",
    "a embroidered {}.", "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.", "a photo of a cool {}.",
    "a photo of a small {}.", "a tattoo of the {}.",
)


def template_texts(prompt: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> list[str]:
    """The prompt in every template, with the released substring replacements ``"a a"`` → ``"a"`` and then
    ``"the a"`` → ``"a"`` (module docstring)."""
    return [t.format(prompt).replace("a a", "a").replace("the a", "a") for t in templates]


def mean_embedding(text_embeds: torch.Tensor) -> torch.Tensor:
    """``normalise(mean_k normalise(text_embeds[k]))``: one unit vector from the template embeddings.

    Shapes: ``(k, d)`` → ``(d,)``."""
    return unit(unit(text_embeds).mean(0))


def split_prompt(prompt: str) -> tuple[str, str] | None:
    """The first two parts of ``prompt`` split on ``" and "``, else on ``" with "``; None when it has neither."""
    for sep in (" and ", " with "):
        if sep in prompt:
            parts = prompt.split(sep)
            return parts[0], parts[1]
    return None


def ae_similarities(image_embed: torch.Tensor, full: torch.Tensor, halves: tuple[torch.Tensor, torch.Tensor] | None
                    ) -> dict[str, float]:
    """``full_text``, ``first_half``, ``second_half`` and ``min_object`` (module docstring) from an image embedding
    and the prompt's (and its halves') template embeddings; the halves' scores are NaN when ``halves`` is None.

    Shapes: ``(d,)`` each."""
    v = unit(image_embed)
    out = {"ae_full_text": float(v @ unit(full))}
    if halves is None:
        first = second = math.nan
    else:
        first, second = (float(v @ unit(h)) for h in halves)
    out.update(ae_first_half=first, ae_second_half=second, ae_min_object=min(first, second))
    return out


def prompt_embedding(model, processor, prompt: str, templates: Sequence[str] = IMAGENET_TEMPLATES) -> torch.Tensor:
    """``t(P)``: the normalised mean of CLIP's embeddings of ``prompt`` in every template. Shape ``(d,)``."""
    return mean_embedding(encode_texts(model, processor, template_texts(prompt, templates)))


def load_captioner(model_id: str = CAPTION_MODEL, device=None, dtype=None):
    """``(BlipForConditionalGeneration, BlipProcessor)`` from a hub id, a folder or ``attnlens-tiny-blip-caption``."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    return load_pretrained(BlipForConditionalGeneration, BlipProcessor, model_id, device, dtype)


@torch.no_grad()
def caption(model, processor, image, prompt: str = CAPTION_PROMPT, num_beams: int = 3, max_length: int = 30,
            min_length: int = 10) -> str:
    """BLIP's caption of ``image`` as LAVIS ``blip_caption`` makes it: decoding starts from ``prompt`` (beam search,
    lengths counted with the prompt's tokens), and the prompt is removed from the decoded text."""
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    ids = model.generate(pixel_values=inputs["pixel_values"].to(model_device(model), model_dtype(model)),
                         input_ids=inputs["input_ids"].to(model_device(model)), num_beams=num_beams,
                         max_length=max_length, min_length=min_length, do_sample=False)
    text = processor.decode(ids[0], skip_special_tokens=True).strip()
    head = prompt.strip()
    return text[len(head):].strip() if text.startswith(head) else text


class AeClipScorer(ImageScorer):
    """``score(run_or_image, prompt) → {"ae_full_text", "ae_min_object", "ae_first_half", "ae_second_half"}``:
    A&E's CLIP image–text similarities (module docstring).

    Args:
        model_id (`str`, *optional*, defaults to ``"openai/clip-vit-base-patch16"``): CLIP; hub id, folder or
            ``attnlens-tiny-clip``.
        model, processor: an already-loaded CLIP (then ``model_id`` is only a label).
    """

    name = "ae-clip"

    def __init__(self, model_id: str = CLIP_MODEL, *, device=None, dtype=None, model: Any = None,
                 processor: Any = None, templates: Sequence[str] = IMAGENET_TEMPLATES):
        self.model_id, self.templates = str(model_id), tuple(templates)
        if model is None or processor is None:
            model, processor = load_clip(model_id, device, dtype)
        self.model, self.processor = model, processor

    def score(self, run_or_image, prompt: str | None = None) -> dict[str, float]:
        image, prompt = resolve_input(run_or_image, prompt)
        v = encode_images(self.model, self.processor, [image])[0]
        halves = split_prompt(prompt)
        emb = lambda p: prompt_embedding(self.model, self.processor, p, self.templates)  # noqa: E731
        return ae_similarities(v, emb(prompt), None if halves is None else (emb(halves[0]), emb(halves[1])))


class AeTextTextScorer(ImageScorer):
    """``score(run_or_image, prompt) → {"ae_text_text"}``: BLIP caption → CLIP text–text similarity (module
    docstring). The last caption is kept in ``last_caption``.

    Args:
        model_id (`str`, *optional*, defaults to ``"openai/clip-vit-base-patch16"``): CLIP.
        caption_model_id (`str`, *optional*, defaults to ``"Salesforce/blip-image-captioning-base"``): BLIP
            captioner; hub id, folder or ``attnlens-tiny-blip-caption``.
        clip, captioner: already-loaded ``(model, processor)`` pairs.
        caption_fn (`callable`, *optional*): ``caption_fn(image) → str`` in place of BLIP (a stub in tests, another
            captioner); then no captioning model is loaded.
    """

    name = "ae-text-text"

    def __init__(self, model_id: str = CLIP_MODEL, caption_model_id: str = CAPTION_MODEL, *, device=None,
                 dtype=None, clip: tuple[Any, Any] | None = None, captioner: tuple[Any, Any] | None = None,
                 templates: Sequence[str] = IMAGENET_TEMPLATES, caption_fn: Callable[[Any], str] | None = None):
        self.model_id, self.caption_model_id, self.templates = str(model_id), str(caption_model_id), tuple(templates)
        self.clip = clip or load_clip(model_id, device, dtype)
        if caption_fn is None:
            captioner = captioner or load_captioner(caption_model_id, device, dtype)
            caption_fn = functools.partial(caption, *captioner)
        self.caption_fn = caption_fn
        self.last_caption: str | None = None

    def score(self, run_or_image, prompt: str | None = None) -> dict[str, float]:
        image, prompt = resolve_input(run_or_image, prompt)
        self.last_caption = str(self.caption_fn(image))
        c = unit(encode_texts(*self.clip, [self.last_caption])[0])
        return {"ae_text_text": float(c @ prompt_embedding(*self.clip, prompt, self.templates))}

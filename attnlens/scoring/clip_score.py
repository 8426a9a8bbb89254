"""CLIPScore: how well an image matches its prompt under CLIP, as the community reports it.

    CLIPScore(I, P) = 100 · max(cos(E_I(I), E_T(P)), 0)

with ``E_I``, ``E_T`` CLIP's projected image and text embeddings of the image (CLIP's preprocessing: resize the
short side, centre-crop) and of the prompt as written (no template; truncated to CLIP's 77 tokens). This is the
``torchmetrics.multimodal.CLIPScore`` convention (weight 100, default model ``openai/clip-vit-large-patch14``);
Hessel et al.'s original CLIP-S uses weight 2.5 with ViT-B/32 and the prefix "A photo depicts" — pass
``weight=2.5, prefix="A photo depicts "`` and ``openai/clip-vit-base-patch32`` for that.

Range: 0 to ``weight`` (a negative cosine scores 0).

Examples::

    >>> import torch
    >>> clip_score_from_embeddings(torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]]))   # 100 · cos 45°
    tensor([70.7107])
    >>> clip_score_from_embeddings(torch.tensor([[1.0, 0.0]]), torch.tensor([[-1.0, 0.0]]))  # clamped at 0
    tensor([0.])
"""

from __future__ import annotations

from typing import Any

import torch

from ._common import ImageScorer, load_pretrained, model_device, model_dtype, resolve_input, unit

DEFAULT_MODEL = "openai/clip-vit-large-patch14"


def clip_score_from_embeddings(image_embeds: torch.Tensor, text_embeds: torch.Tensor,
                               weight: float = 100.0) -> torch.Tensor:
    """``weight · max(cos(image_embeds[i], text_embeds[i]), 0)`` for each row i.

    Shapes: ``(n, d)`` and ``(n, d)`` → ``(n,)``."""
    cos = (unit(image_embeds) * unit(text_embeds)).sum(-1)
    return weight * cos.clamp(min=0)


def load_clip(model_id: str = DEFAULT_MODEL, device=None, dtype=None):
    """``(CLIPModel, CLIPProcessor)`` from a hub id, a local folder or ``attnlens-tiny-clip``."""
    from transformers import CLIPModel, CLIPProcessor

    return load_pretrained(CLIPModel, CLIPProcessor, model_id, device, dtype)


@torch.no_grad()
def encode_images(model, processor, images) -> torch.Tensor:
    """CLIP's projected image embeddings ``(n, d)`` (not normalised) of a list of PIL images."""
    pixels = processor(images=list(images), return_tensors="pt")["pixel_values"]
    out = model.get_image_features(pixel_values=pixels.to(model_device(model), model_dtype(model)))
    return getattr(out, "pooler_output", out)


@torch.no_grad()
def encode_texts(model, processor, texts) -> torch.Tensor:
    """CLIP's projected text embeddings ``(n, d)`` (not normalised); texts padded and truncated to 77 tokens."""
    tok = processor.tokenizer(list(texts), padding=True, truncation=True, max_length=77, return_tensors="pt")
    out = model.get_text_features(input_ids=tok["input_ids"].to(model_device(model)),
                                  attention_mask=tok["attention_mask"].to(model_device(model)))
    return getattr(out, "pooler_output", out)


class ClipScorer(ImageScorer):
    """``score(run_or_image, prompt) → {"clip_score": CLIPScore}`` (module docstring).

    Args:
        model_id (`str`, *optional*, defaults to ``"openai/clip-vit-large-patch14"``): hub id, folder or
            ``attnlens-tiny-clip``.
        weight (`float`, *optional*, defaults to 100): the score's scale.
        prefix (`str`, *optional*, defaults to ``""``): text put before the prompt.
        model, processor: already-loaded objects (then ``model_id`` is only a label).
    """

    name = "clip"

    def __init__(self, model_id: str = DEFAULT_MODEL, *, device=None, dtype=None, weight: float = 100.0,
                 prefix: str = "", model: Any = None, processor: Any = None):
        self.model_id, self.weight, self.prefix = str(model_id), float(weight), prefix
        if model is None or processor is None:
            model, processor = load_clip(model_id, device, dtype)
        self.model, self.processor = model, processor

    def score(self, run_or_image, prompt: str | None = None) -> dict[str, float]:
        image, prompt = resolve_input(run_or_image, prompt)
        img = encode_images(self.model, self.processor, [image])
        txt = encode_texts(self.model, self.processor, [self.prefix + prompt])
        return {"clip_score": float(clip_score_from_embeddings(img, txt, self.weight)[0])}

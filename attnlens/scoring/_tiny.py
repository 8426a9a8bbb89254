"""Tiny scorer models: the transformers classes the published protocols use (CLIP, BLIP captioning, BLIP VQA),
at small scale with seeded random weights, written by ``save_pretrained`` into a folder and then loaded through the
same ``from_pretrained`` call as ``openai/clip-vit-base-patch16`` or ``Salesforce/blip-vqa-base``.

No weights can be downloaded where attnlens is tested, so these exercise the scorers' loading and scoring code end
to end; their *scores* mean nothing. Names (:data:`TINY_MODELS`):

* ``attnlens-tiny-clip`` — ``CLIPModel`` (ViT 32×32 px, patch 8; a 2-layer text tower with the real CLIP BPE
  tokenizer shipped in attnlens) and its ``CLIPProcessor``;
* ``attnlens-tiny-blip-caption`` — ``BlipForConditionalGeneration`` and its ``BlipProcessor``;
* ``attnlens-tiny-blip-vqa`` — ``BlipForQuestionAnswering`` and its ``BlipProcessor``.

BLIP tokenises with a BERT WordPiece tokenizer; here its vocabulary is built offline (:func:`wordpiece_vocab`):
BERT's special tokens, the letters and digits (so every word tokenises), and the words of the testbed and of the
T2I-CompBench prompts, with BLIP's ``[DEC]`` (decoder start) and ``[ENC]`` (question start) added last, as BLIP adds
them to BERT's vocabulary.

A folder is built once per version into ``$ATTNLENS_HOME/scorers`` (atomically, like the embedded models).
"""

from __future__ import annotations

import hashlib
import shutil
import string
from pathlib import Path
from typing import Callable

import torch

from ..models.registry import build_once, cache_dir
from ..testbed.render import COLOURS, SHAPES, SIZE_WORDS
from ..tokenizer import write_tokenizer_files

#: words every tiny WordPiece vocabulary holds (besides letters and digits): the answers, BLIP's caption prompt,
#: the testbed's words and common words of attribute-binding prompts
WORDS = (
    "yes no a an the and with of on in to is picture photo next big small",
    " ".join(COLOURS), " ".join(SHAPES), " ".join(SIZE_WORDS),
    "green blue red yellow black white brown purple pink orange gray bench bowl cake horse vase car cat dog book",
    "round square oblong cubic spherical cylindrical wooden metallic plastic glass fluffy rubber leather fabric",
)
IMAGE_SIZE = 32
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def wordpiece_vocab() -> list[str]:
    """The tiny BERT vocabulary, in id order (``[PAD]`` = 0, as in BERT; ``[DEC]``, ``[ENC]`` are added after)."""
    words = list(dict.fromkeys(w for line in WORDS for w in line.split()))
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    return list(SPECIAL) + chars + ["##" + c for c in string.ascii_lowercase + string.digits] + words


def _bert_tokenizer(directory: Path):
    from transformers import BertTokenizer

    vocab = directory / "vocab.txt"
    vocab.write_text("\n".join(wordpiece_vocab()) + "\n")
    tok = BertTokenizer(str(vocab), do_lower_case=True, model_max_length=512)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    vocab.unlink()
    return tok


def _blip_config(tok):
    from transformers import BlipConfig

    text = dict(vocab_size=len(tok), hidden_size=32, encoder_hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id, sep_token_id=tok.sep_token_id,
                eos_token_id=tok.sep_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=IMAGE_SIZE, patch_size=8)
    return BlipConfig(text_config=text, vision_config=vision, projection_dim=32)


def _blip_processor(tok):
    from transformers import BlipImageProcessor, BlipProcessor

    image = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    return BlipProcessor(image_processor=image, tokenizer=tok)


def build_tiny_blip(directory: Path, task: str) -> Path:
    """``BlipForConditionalGeneration`` (``task="caption"``) or ``BlipForQuestionAnswering`` (``"vqa"``) with
    seeded random weights and their processor, saved into ``directory``."""
    from transformers import BlipForConditionalGeneration, BlipForQuestionAnswering

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok = _bert_tokenizer(directory)
    cls = {"caption": BlipForConditionalGeneration, "vqa": BlipForQuestionAnswering}[task]
    torch.manual_seed(0)
    model = cls(_blip_config(tok))
    model.save_pretrained(directory, safe_serialization=True)
    _blip_processor(tok).save_pretrained(directory)
    return directory


def build_tiny_clip(directory: Path) -> Path:
    """``CLIPModel`` with seeded random weights (ViT 32 px, patch 8; 2-layer text tower over CLIP's 49,408-entry BPE
    vocabulary) and a ``CLIPProcessor`` (the real CLIP tokenizer, images resized and centre-cropped to 32 px)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    directory = Path(directory)
    text = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=IMAGE_SIZE, patch_size=8)
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    model.save_pretrained(directory, safe_serialization=True)
    tok_dir = write_tokenizer_files(directory / ".tokenizer")
    tok = CLIPTokenizer.from_pretrained(tok_dir)
    square = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    image = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=square)
    CLIPProcessor(image_processor=image, tokenizer=tok).save_pretrained(directory)
    shutil.rmtree(tok_dir)
    return directory


#: name → (builder, version): a new version builds anew
TINY_MODELS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "attnlens-tiny-clip": (build_tiny_clip, "1"),
    "attnlens-tiny-blip-caption": (lambda d: build_tiny_blip(d, "caption"), "1"),
    "attnlens-tiny-blip-vqa": (lambda d: build_tiny_blip(d, "vqa"), "1"),
}


def tiny_model_path(name: str) -> Path:
    """The folder of tiny scorer model ``name`` (:data:`TINY_MODELS`), built there on first use."""
    import transformers

    build, version = TINY_MODELS[name]
    key = hashlib.sha256(f"{name}:{version}:{transformers.__version__}".encode()).hexdigest()[:10]
    return build_once(cache_dir() / "scorers" / f"{name}-{key}", build, "config.json",
                      {"name": name, "version": version})

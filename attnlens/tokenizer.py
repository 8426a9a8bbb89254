"""The real CLIP tokenizer, built offline from the BPE vocabulary shipped with attnlens.

Stable Diffusion 1.x/2.x tokenise prompts with OpenAI CLIP's byte-level BPE (49,408 entries: 256 byte symbols,
their ``</w>`` forms, 48,894 merges, ``<|startoftext|>`` and ``<|endoftext|>``). The vocabulary and merge list of
the Hugging Face ``CLIPTokenizer`` are a deterministic function of ``bpe_simple_vocab_16e6.txt.gz``; this module
derives them, so word pieces ("checkered" → ``chec`` + ``kered</w>``) split exactly as they do in SD.

Examples::

    >>> from attnlens.tokenizer import clip_tokenizer
    >>> tok = clip_tokenizer()
    >>> tok.convert_ids_to_tokens(tok("a red crown").input_ids)
    ['<|startoftext|>', 'a</w>', 'red</w>', 'crown</w>', '<|endoftext|>']
"""

from __future__ import annotations

import functools
import gzip
import json
from importlib import resources
from pathlib import Path

BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
N_MERGES = 49152 - 256 - 2  # as in CLIP's SimpleTokenizer
MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def bpe_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """Return ``(vocab, merges)`` of the CLIP tokenizer, derived from the shipped BPE file."""
    raw = resources.files("attnlens.assets").joinpath(BPE_FILE).read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols]
    vocab_list += ["".join(m.split()) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab_list)}, merges


def write_tokenizer_files(directory: str | Path) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer config of SD's tokenizer into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab, merges = bpe_vocab_and_merges()
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "do_lower_case": True,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    special = {k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2, sort_keys=True))
    return directory


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """Return the CLIP tokenizer of Stable Diffusion (built once per process, offline)."""
    from transformers import CLIPTokenizer

    vocab, merges = bpe_vocab_and_merges()
    pairs = [tuple(m.split()) for m in merges]
    return CLIPTokenizer(vocab=vocab, merges=pairs, model_max_length=MAX_LENGTH)

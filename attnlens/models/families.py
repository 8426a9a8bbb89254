"""Text encoders' tokenizers for the DiT / MM-DiT families (SD3, Flux, PixArt-Σ, Sana), built offline.

SD3's third encoder, Flux's second and PixArt-Σ's only encoder are T5 v1.1; their tokenizer is a sentencepiece
*unigram* model (``spiece.model``) with T5's special ids (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, no ``<s>``) and 100
``<extra_id_*>`` sentinels after the vocabulary. attnlens cannot download T5's model, so it trains its own, in the
same format, on a corpus it derives from the shipped CLIP BPE file (:func:`t5_corpus`): the whole-word entries of
the merge list in merge order (CLIP's frequent words first), each repeated by a Zipf-like weight. Training is
single-threaded with an unshuffled input, so the model bytes are the same on every run (:func:`t5_spiece_model`).

Examples::

    >>> from attnlens.models.families import t5_tokenizer
    >>> tok = t5_tokenizer()
    >>> tok.convert_ids_to_tokens(tok("a red crown").input_ids)
    ['▁a', '▁red', '▁c', 'row', 'n', '</s>']
"""

from __future__ import annotations

import functools
import io
import shutil
import tempfile
from pathlib import Path

from ..tokenizer import bpe_vocab_and_merges

#: T5's layout: sentencepiece vocabulary of this size, then 100 sentinel tokens (the encoder's vocab_size is the sum)
T5_SPM_VOCAB = 2000
T5_EXTRA_IDS = 100
T5_VOCAB = T5_SPM_VOCAB + T5_EXTRA_IDS
CORPUS_WORDS = 12000


def t5_corpus(n_words: int = CORPUS_WORDS) -> list[str]:
    """The training lines: CLIP's first ``n_words`` whole ASCII words (merge order), word ``r`` repeated
    ``max(1, 3000 // (r + 20))`` times (a Zipf-like frequency, so common words become single pieces)."""
    _, merges = bpe_vocab_and_merges()
    words = []
    for m in merges:
        w = "".join(m.split())
        if w.endswith("</w>") and w[:-4].isascii() and w[:-4].isalpha():
            words.append(w[:-4])
            if len(words) == n_words:
                break
    return [w for r, w in enumerate(words) for _ in range(max(1, 3000 // (r + 20)))]


@functools.lru_cache(maxsize=1)
def t5_spiece_model() -> bytes:
    """The bytes of attnlens's T5-format ``spiece.model`` (unigram, deterministic; ≈ 0.5 s to train)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(t5_corpus()), model_writer=buf, vocab_size=T5_SPM_VOCAB, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1, shuffle_input_sentence=False,
        character_coverage=1.0, minloglevel=2,
    )
    return buf.getvalue()


def write_t5_tokenizer(directory: str | Path, max_length: int = 512) -> Path:
    """Write a T5 tokenizer folder (``spiece.model``, ``tokenizer.json``, ``tokenizer_config.json``) into
    ``directory``, loadable by ``T5TokenizerFast.from_pretrained`` as a hub T5 tokenizer is."""
    from transformers import T5TokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".spiece-"))
    try:
        (tmp / "spiece.model").write_bytes(t5_spiece_model())
        tok = T5TokenizerFast.from_pretrained(tmp, extra_ids=T5_EXTRA_IDS, model_max_length=max_length)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(directory)
    (directory / "spiece.model").write_bytes(t5_spiece_model())
    return directory


@functools.lru_cache(maxsize=1)
def t5_tokenizer():
    """attnlens's T5-format tokenizer (built once per process, offline)."""
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as d:
        return T5TokenizerFast.from_pretrained(write_t5_tokenizer(d))

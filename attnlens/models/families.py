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

import torch

from ..tokenizer import bpe_vocab_and_merges, clip_tokenizer

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


def build_sd3(directory: Path) -> Path:
    """``attnlens-tiny-sd3``: SD3-shaped (MM-DiT joint attention), random weights, seeded before each component.

    64×64 images, AutoencoderKL with 4× downsampling (latent 4×16×16), an ``SD3Transformer2DModel`` with patch 2
    (8×8 image tokens), 2 joint blocks of 2 heads × 16; CLIP-L and CLIP-G (``CLIPTextModelWithProjection``, width
    32 each, the shipped CLIP BPE) and a 2-layer ``T5EncoderModel`` (width 64) with attnlens's T5 tokenizer;
    ``FlowMatchEulerDiscreteScheduler`` (shift 3, as SD3).
    """
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                           StableDiffusion3Pipeline)
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel, T5TokenizerFast


    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, out_channels=4,
                                        pos_embed_max_size=16)
    clip = lambda: CLIPTextModelWithProjection(CLIPTextConfig(  # noqa: E731
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=32,
        hidden_act="gelu"))
    torch.manual_seed(0)
    text_encoder = clip()
    torch.manual_seed(0)
    text_encoder_2 = clip()
    torch.manual_seed(0)
    text_encoder_3 = T5EncoderModel(T5Config(vocab_size=T5_VOCAB, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                                             num_heads=4, feed_forward_proj="gated-gelu", pad_token_id=0,
                                             eos_token_id=1, decoder_start_token_id=0))
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4, norm_num_groups=8,
                        sample_size=64, shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False,
                        use_post_quant_conv=False)
    with tempfile.TemporaryDirectory() as d:
        t5 = T5TokenizerFast.from_pretrained(write_t5_tokenizer(Path(d) / "t5", max_length=256))
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(),
                                    text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer(),
                                    text_encoder_3=text_encoder_3, tokenizer_3=t5)
    pipe.save_pretrained(directory, safe_serialization=True)
    (Path(directory) / "tokenizer_3" / "spiece.model").write_bytes(t5_spiece_model())
    return Path(directory)

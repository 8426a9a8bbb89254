"""The DiT / MM-DiT families (SD3, Flux, PixArt-Σ, Sana): their tokenizers and tiny builders, all built offline.

SD3's third encoder, Flux's second and PixArt-Σ's only encoder are T5 v1.1; their tokenizer is a sentencepiece
*unigram* model (``spiece.model``) with T5's special ids (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, no ``<s>``) and 100
``<extra_id_*>`` sentinels after the vocabulary. attnlens cannot download T5's model, so it trains its own, in the
same format, on a corpus it derives from the shipped CLIP BPE file (:func:`t5_corpus`): the whole-word entries of
the merge list in merge order (CLIP's frequent words first), each repeated by a Zipf-like weight. Training is
single-threaded with an unshuffled input, so the model bytes are the same on every run (:func:`t5_spiece_model`).

Sana's encoder is Gemma-2; its tokenizer is a sentencepiece *BPE* model (``tokenizer.model``) with byte fallback and
Gemma's special ids (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3; ``<bos>`` prepended), trained the same way
on the same words joined into six-word lines (so pieces carry ``▁`` as in Gemma's) (:func:`gemma_spiece_model`).

The tiny builders (``build_sd3``, ``build_flux``, ``build_pixart``, ``build_sana``) seed torch before every
component and save a diffusers folder, which loads through ``DiffusionPipeline.from_pretrained`` as a hub id does.

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
from .tiny import _text_config

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


#: Gemma's layout: sentencepiece BPE vocabulary of this size (byte fallback included)
GEMMA_SPM_VOCAB = 2000


@functools.lru_cache(maxsize=1)
def gemma_spiece_model() -> bytes:
    """The bytes of attnlens's Gemma-format ``tokenizer.model`` (BPE, byte fallback, deterministic; ≈ 1 s)."""
    import sentencepiece as spm

    words = t5_corpus()
    lines = [" ".join(words[i:i + 6]) for i in range(0, len(words), 6)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, vocab_size=GEMMA_SPM_VOCAB, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", byte_fallback=True, split_digits=True, add_dummy_prefix=False,
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True, num_threads=1,
        shuffle_input_sentence=False, character_coverage=1.0, minloglevel=2,
    )
    return buf.getvalue()


def write_gemma_tokenizer(directory: str | Path, max_length: int = 8192) -> Path:
    """Write a Gemma tokenizer folder (``tokenizer.model``, ``tokenizer.json``, ``tokenizer_config.json``) into
    ``directory``, loadable by ``GemmaTokenizerFast.from_pretrained`` as a hub Gemma tokenizer is."""
    from transformers import GemmaTokenizerFast

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gemma-"))
    try:
        (tmp / "tokenizer.model").write_bytes(gemma_spiece_model())
        tok = GemmaTokenizerFast.from_pretrained(tmp, add_bos_token=True, add_eos_token=False,
                                                 model_max_length=max_length)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(directory)
    (directory / "tokenizer.model").write_bytes(gemma_spiece_model())
    return directory


def _t5_encoder(d_model: int = 64):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(T5Config(vocab_size=T5_VOCAB, d_model=d_model, d_kv=16, d_ff=2 * d_model, num_layers=2,
                                   num_heads=4, feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0))


def _loaded_t5_tokenizer(max_length: int):
    from transformers import T5TokenizerFast

    with tempfile.TemporaryDirectory() as d:
        return T5TokenizerFast.from_pretrained(write_t5_tokenizer(Path(d) / "t5", max_length=max_length))


def _kl_vae(latent_channels: int = 4, **kw):
    """The tiny KL autoencoder of the DiT builders: 3 levels, 4× downsampling (64×64 images → 16×16 latents)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=latent_channels, norm_num_groups=8,
                         sample_size=64, **kw)


def _save(pipe, directory: Path, spiece: dict[str, tuple[str, bytes]]) -> Path:
    pipe.save_pretrained(directory, safe_serialization=True)
    for folder, (name, data) in spiece.items():
        (Path(directory) / folder / name).write_bytes(data)
    return Path(directory)


def build_flux(directory: Path) -> Path:
    """``attnlens-tiny-flux``: Flux-shaped (19+38 → 2 double-stream + 2 single-stream blocks), random weights.

    64×64 images, AutoencoderKL with 4× downsampling (latent 4×16×16, packed 2×2 into 8×8 = 64 image tokens of 16
    channels), a ``FluxTransformer2DModel`` of 2 heads × 16 (rotary axes 4+6+6) with embedded guidance; CLIP-L
    (``CLIPTextModel``, width 32, the shipped CLIP BPE, pooled output only) and a 2-layer ``T5EncoderModel``
    (width 64) with attnlens's T5 tokenizer (512 positions); ``FlowMatchEulerDiscreteScheduler`` with Flux's
    resolution-dependent shift.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=2, num_single_layers=2,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_text_config(32, 32))
    text_encoder_2 = _t5_encoder()
    vae = _kl_vae(shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False, use_post_quant_conv=False)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(),
                        text_encoder_2=text_encoder_2, tokenizer_2=_loaded_t5_tokenizer(512), transformer=transformer)
    return _save(pipe, directory, {"tokenizer_2": ("spiece.model", t5_spiece_model())})


def build_pixart(directory: Path) -> Path:
    """``attnlens-tiny-pixart``: PixArt-Σ-shaped (DiT with ``attn2`` cross-attention over T5), random weights.

    64×64 images, AutoencoderKL with 4× downsampling (latent 4×16×16), a ``PixArtTransformer2DModel`` with patch 2
    (8×8 image tokens), 2 blocks of 2 heads × 16, ``ada_norm_single``, learned sigma (8 output channels); a 2-layer
    ``T5EncoderModel`` (width 64) with attnlens's T5 tokenizer (300 positions, PixArt-Σ's max_sequence_length);
    ``DPMSolverMultistepScheduler``. Its sample size (16) has no resolution bins: call it with
    ``use_resolution_binning=False``.
    """
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(sample_size=16, num_layers=2, patch_size=2, attention_head_dim=16,
                                           num_attention_heads=2, caption_channels=64, in_channels=4,
                                           cross_attention_dim=32, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    text_encoder = _t5_encoder()
    vae = _kl_vae(scaling_factor=0.13025)
    pipe = PixArtSigmaPipeline(tokenizer=_loaded_t5_tokenizer(300), text_encoder=text_encoder, vae=vae,
                               transformer=transformer, scheduler=DPMSolverMultistepScheduler())
    return _save(pipe, directory, {"tokenizer": ("spiece.model", t5_spiece_model())})


def build_sana(directory: Path) -> Path:
    """``attnlens-tiny-sana``: Sana-shaped (linear self-attention, ``attn2`` cross-attention over Gemma-2), random.

    64×64 images, a 3-level ``AutoencoderDC`` (4× downsampling here, 32× in Sana; latent 4×16×16), a
    ``SanaTransformer2DModel`` with patch 1 (16×16 image tokens), 2 blocks, 2 self-attention heads × 8 and
    2 cross-attention heads × 8; a 2-layer ``Gemma2Model`` (width 32) with attnlens's Gemma-format tokenizer;
    ``FlowMatchEulerDiscreteScheduler`` (shift 3). Its sample size (16) has no resolution bins: call it with
    ``use_resolution_binning=False``.
    """
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from transformers import Gemma2Config, Gemma2Model, GemmaTokenizerFast

    with tempfile.TemporaryDirectory() as d:
        tokenizer = GemmaTokenizerFast.from_pretrained(write_gemma_tokenizer(Path(d) / "gemma"))
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(patch_size=1, in_channels=4, out_channels=4, num_layers=2,
                                         num_attention_heads=2, attention_head_dim=8, num_cross_attention_heads=2,
                                         cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=32,
                                         sample_size=16)
    torch.manual_seed(0)
    text_encoder = Gemma2Model(Gemma2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                            head_dim=16, query_pre_attn_scalar=16, max_position_embeddings=1024,
                                            sliding_window=1024))
    torch.manual_seed(0)
    vae = AutoencoderDC(in_channels=3, latent_channels=4, attention_head_dim=2,
                        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
                        encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
                        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
                        downsample_block_type="conv", upsample_block_type="interpolate", decoder_norm_types="rms_norm",
                        decoder_act_fns="silu", scaling_factor=0.41407)
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer,
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    return _save(pipe, directory, {"tokenizer": ("tokenizer.model", gemma_spiece_model())})


def build_sd3(directory: Path) -> Path:
    """``attnlens-tiny-sd3``: SD3-shaped (MM-DiT joint attention), random weights, seeded before each component.

    64×64 images, AutoencoderKL with 4× downsampling (latent 4×16×16), an ``SD3Transformer2DModel`` with patch 2
    (8×8 image tokens), 2 joint blocks of 2 heads × 16; CLIP-L and CLIP-G (``CLIPTextModelWithProjection``, width
    32 each, the shipped CLIP BPE) and a 2-layer ``T5EncoderModel`` (width 64) with attnlens's T5 tokenizer;
    ``FlowMatchEulerDiscreteScheduler`` (shift 3, as SD3).
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, out_channels=4,
                                        pos_embed_max_size=16)
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(_text_config(32, 32))
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(32, 32))
    text_encoder_3 = _t5_encoder()
    vae = _kl_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(),
                                    text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer(),
                                    text_encoder_3=text_encoder_3, tokenizer_3=_loaded_t5_tokenizer(256))
    return _save(pipe, directory, {"tokenizer_3": ("spiece.model", t5_spiece_model())})

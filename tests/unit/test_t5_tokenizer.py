"""attnlens's own T5-format sentencepiece tokenizer (issue 15): deterministic, T5's special ids, round trip."""

from attnlens.models import families


def test_spiece_model_is_deterministic():
    first = families.t5_spiece_model()
    families.t5_spiece_model.cache_clear()
    assert families.t5_spiece_model() == first


def test_t5_format(tmp_path):
    from transformers import T5TokenizerFast

    tok = T5TokenizerFast.from_pretrained(families.write_t5_tokenizer(tmp_path / "tok"))
    assert (tmp_path / "tok" / "spiece.model").read_bytes() == families.t5_spiece_model()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.bos_token_id) == (0, 1, 2, None)
    assert len(tok) == families.T5_VOCAB
    ids = tok("a red crown and a golden strawberry", padding="max_length", max_length=24).input_ids
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[0] == "▁a" and "▁red" in pieces and pieces.count("</s>") == 1
    assert pieces[pieces.index("</s>") + 1:] == ["<pad>"] * (24 - pieces.index("</s>") - 1)
    assert tok.decode(ids, skip_special_tokens=True) == "a red crown and a golden strawberry"

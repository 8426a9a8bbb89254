"""Every scorer end to end on a real run's image (attnlens-tiny, 2 steps), with tiny random-weight models of the
published classes (CLIPModel, BlipForConditionalGeneration, BlipForQuestionAnswering) built by attnlens, saved with
save_pretrained and loaded with from_pretrained on the folder — the path a hub id takes (issue 16)."""

from __future__ import annotations

import math

import pytest
import torch

import attnlens
from attnlens.scoring import get_scorer, model_location, tiny_model_path
from attnlens.scoring._tiny import build_tiny_clip

PROMPT = "a red circle and a blue square"


@pytest.fixture(scope="module")
def run(tiny_pipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("scoring") / "run"
    return attnlens.sample(tiny_pipe, PROMPT, seed=0, out=out, num_inference_steps=2)


CASES = [
    ("clip", {"model_id": "attnlens-tiny-clip"}, {"clip_score": (0.0, 100.0)}),
    ("ae-clip", {"model_id": "attnlens-tiny-clip"},
     {k: (-1.0, 1.0) for k in ("ae_full_text", "ae_first_half", "ae_second_half", "ae_min_object")}),
    ("ae-text-text", {"model_id": "attnlens-tiny-clip", "caption_model_id": "attnlens-tiny-blip-caption"},
     {"ae_text_text": (-1.0, 1.0)}),
    ("compbench-vqa", {"model_id": "attnlens-tiny-blip-vqa"}, {"compbench_vqa": (0.0, 1.0)}),
    ("geneval", {}, {"geneval_correct": (0.0, 1.0)}),
]


@pytest.mark.parametrize("name, options, ranges", CASES, ids=[c[0] for c in CASES])
def test_scorer_on_a_recorded_run_is_finite_in_range_and_deterministic(run, name, options, ranges):
    first = get_scorer(name, **options)(run)
    assert set(first) == set(ranges)
    for key, (lo, hi) in ranges.items():
        assert math.isfinite(first[key]) and lo - 1e-6 <= first[key] <= hi + 1e-6, (key, first[key])
    # a second scorer, loaded again from the folder (the path a user's --model-id PATH takes), on the run folder
    folders = {k: model_location(v) for k, v in options.items()}
    assert get_scorer(name, **folders).score(str(run.path)) == first  # the method form, on the run folder


def test_the_halves_are_the_two_objects_and_min_object_is_their_minimum(run):
    out = get_scorer("ae-clip", model_id="attnlens-tiny-clip").score(run)
    assert out["ae_min_object"] == min(out["ae_first_half"], out["ae_second_half"])
    other = get_scorer("ae-clip", model_id="attnlens-tiny-clip").score(run, "a red circle")
    assert math.isnan(other["ae_min_object"]) and other["ae_full_text"] != out["ae_full_text"]


def test_vqa_asks_one_question_per_noun_phrase_with_blips_special_tokens(run):
    out = get_scorer("compbench-vqa", model_id="attnlens-tiny-blip-vqa")(run)
    s = get_scorer("compbench-vqa", model_id="attnlens-tiny-blip-vqa").built  # the same scorer: models loaded once
    assert [q for q, _ in s.last_answers] == ["a red circle?", "a blue square?"]
    assert all(0.0 < p < 1.0 for _, p in s.last_answers)
    assert out["compbench_vqa"] == round(math.prod(float(f"{p:.4f}") for _, p in s.last_answers), 4)
    tok = s.vqa.args[1].tokenizer  # the processor loaded from the folder knows BLIP's [DEC] and [ENC]
    cfg = s.vqa.args[0].config.text_config
    assert tok.convert_tokens_to_ids("[DEC]") == cfg.bos_token_id
    assert tok.convert_tokens_to_ids("[ENC]") == cfg.vocab_size - 1 != tok.unk_token_id


def test_tiny_models_are_built_deterministically(tmp_path):
    from transformers import CLIPModel

    fresh = CLIPModel.from_pretrained(build_tiny_clip(tmp_path / "clip")).state_dict()
    cached = CLIPModel.from_pretrained(tiny_model_path("attnlens-tiny-clip")).state_dict()
    assert fresh.keys() == cached.keys()
    assert all(torch.equal(fresh[k], cached[k]) for k in fresh)


def test_the_python_example_of_docs_scoring_runs(tmp_path, monkeypatch):
    """docs/scoring.md's ```python blocks run as written (tiny models, offline), in a fresh folder."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "scoring.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", doc, re.S | re.M)
    assert blocks
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/scoring.md python block {i + 1}", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "runs" / "scoring-demo" / "scores.csv").is_file()

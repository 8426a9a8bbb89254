"""Scorers on hand-made inputs with known answers: stub CLIP embeddings, a stub VQA model with fixed
probabilities, a stub detector's boxes (issue 16). No model weights."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import attnlens.scoring as S
from attnlens.errors import BadOption, ModelNotFound, NotFoundError
from attnlens.scoring.ae_clip import (IMAGENET_TEMPLATES, AeClipScorer, AeTextTextScorer, mean_embedding,
                                      split_prompt, template_texts)
from attnlens.scoring.clip_score import ClipScorer, clip_score_from_embeddings
from attnlens.scoring.compbench_vqa import (CompBenchVqaScorer, binding_score, compbench_prompts, dataset_dir,
                                            vqa_question, yes_probability_from_logits)
from attnlens.scoring.geneval_rules import (Box, GenEvalScorer, box_iou, check, keep_boxes, relative_position,
                                            shapes_detector, caption_metadata)
from attnlens.testbed.render import RenderedObject, render

IMAGE = np.zeros((8, 8, 3), np.uint8)


class StubClip(torch.nn.Module):
    """CLIP stand-in: one fixed image embedding; a text's embedding is ``text_embed(text)``. The stub tokenizer
    gives each text an id that indexes ``texts`` (every text the scorer embedded, in order)."""

    def __init__(self, image_embed, text_embed):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # device and dtype, as a real model has
        self.image_embed = torch.tensor(image_embed, dtype=torch.float32)
        self.text_embed = text_embed
        self.texts: list[str] = []

    def get_image_features(self, pixel_values):
        return self.image_embed.expand(len(pixel_values), -1)

    def get_text_features(self, input_ids, attention_mask):
        return torch.tensor([self.text_embed(self.texts[i]) for i in input_ids[:, 0].tolist()], dtype=torch.float32)


class StubProcessor:
    def __init__(self, model: StubClip):
        self.model = model

    def __call__(self, images, return_tensors="pt"):
        return {"pixel_values": torch.zeros(len(images), 3, 2, 2)}

    def tokenizer(self, texts, **kwargs):
        start = len(self.model.texts)
        self.model.texts.extend(texts)
        ids = torch.arange(start, start + len(texts))[:, None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def stub_clip(image_embed, text_embed):
    model = StubClip(image_embed, text_embed)
    return model, StubProcessor(model)


def by_words(text: str) -> list[float]:
    """[1, 1] for a text naming a cat and a frog, [1, 0] a cat only, [0, 1] a frog only."""
    return [float("cat" in text), float("frog" in text)]


# ------------------------------------------------------------------------------------------------ CLIPScore
def test_clip_score_is_100_times_the_clamped_cosine():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    txt = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.0, 5.0]])
    assert torch.allclose(clip_score_from_embeddings(img, txt), torch.tensor([100 / math.sqrt(2), 0.0, 100.0]))
    assert torch.allclose(clip_score_from_embeddings(img[:1], txt[:1], weight=2.5), torch.tensor([2.5 / math.sqrt(2)]))


def test_clip_scorer_embeds_the_prompt_as_written_with_its_prefix():
    model, proc = stub_clip([1.0, 0.0], by_words)
    s = ClipScorer(model=model, processor=proc)
    assert s.score(IMAGE, "a cat and a frog") == pytest.approx({"clip_score": 100 / math.sqrt(2)})
    assert model.texts == ["a cat and a frog"]  # no template
    model, proc = stub_clip([0.0, 1.0], lambda t: [1.0, 0.0] if t.startswith("A photo depicts ") else [0.0, 1.0])
    assert ClipScorer(model=model, processor=proc, prefix="A photo depicts ").score(IMAGE, "a cat") == {
        "clip_score": 0.0}


# ------------------------------------------------------------------------------------------------ A&E
def test_templates_are_clips_80_with_the_released_replacements():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    texts = template_texts("a cat")
    assert len(texts) == 80
    assert texts[0] == "a bad photo of a cat."                          # "a a cat" → "a cat"
    assert "a bad photo of a cat." == template_texts("a cat", ["a bad photo of the {}."])[0]  # "the a" → "a"
    assert template_texts("a banana and a cat", ["{}"]) == ["a bananand a cat"]  # a plain substring replacement


def test_split_prompt_on_and_then_with():
    assert split_prompt("a cat and a frog") == ("a cat", "a frog")
    assert split_prompt("a cat with a bow and a frog") == ("a cat with a bow", "a frog")  # " and " first
    assert split_prompt("a cat and a dog and a frog") == ("a cat", "a dog")  # the first two parts
    assert split_prompt("a bear with a bow") == ("a bear", "a bow")
    assert split_prompt("a red crown") is None


def test_mean_embedding_normalises_each_template_before_the_mean():
    e = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # unit: [.6, .8], [0, 1]; mean [.3, .9]
    expect = torch.tensor([0.3, 0.9]) / math.hypot(0.3, 0.9)
    assert torch.allclose(mean_embedding(e), expect)


def test_ae_clip_full_prompt_and_min_object_with_80_templates():
    model, proc = stub_clip([1.0, 0.0], by_words)
    out = AeClipScorer(model=model, processor=proc).score(IMAGE, "a cat and a frog")
    assert out == pytest.approx({"ae_full_text": 1 / math.sqrt(2), "ae_first_half": 1.0, "ae_second_half": 0.0,
                                 "ae_min_object": 0.0})
    assert len(model.texts) == 3 * 80  # the prompt and its two halves, each in every template
    # templates embedded at different norms: each is normalised before the mean (a raw mean would differ)
    photo = sum("photo" in t for t in template_texts("a cat"))
    model, proc = stub_clip([1.0, 0.0], lambda t: [10.0, 0.0] if "photo" in t else [0.0, 1.0])
    out = AeClipScorer(model=model, processor=proc).score(IMAGE, "a cat")
    assert out["ae_full_text"] == pytest.approx(photo / math.hypot(photo, 80 - photo))
    assert math.isnan(out["ae_min_object"])  # no " and " / " with ": no halves


def test_ae_text_text_compares_the_caption_with_the_template_embedding():
    model, proc = stub_clip([1.0, 0.0], by_words)
    s = AeTextTextScorer(clip=(model, proc), caption_fn=lambda image: "a frog on a log")
    out = s.score(IMAGE, "a cat and a frog")
    assert out == pytest.approx({"ae_text_text": 1 / math.sqrt(2)})
    assert s.last_caption == "a frog on a log" and model.texts[0] == "a frog on a log"  # caption: no template


# ------------------------------------------------------------------------------------------------ T2I-CompBench
def test_vqa_question_and_product_of_rounded_answers():
    assert vqa_question("a Green bench") == "a green bench?"
    assert vqa_question("the (red) apple:") == "the red apple?"
    assert binding_score([]) == 1.0
    assert binding_score([0.9, 0.5, 0.2]) == pytest.approx(0.09)
    assert binding_score([0.66666, 0.66666]) == 0.4445  # each answer rounded first: 0.6667² = 0.44449
    assert binding_score([0.33333, 0.3]) == 0.1  # and the product: 0.3333 · 0.3 = 0.09999
    assert binding_score([0.33333], decimals=None) == pytest.approx(0.33333)


def test_yes_probability_renormalises_yes_against_no():
    logits = torch.full((2, 5), -1e9)
    logits[0, 1], logits[0, 2], logits[0, 3] = math.log(3), 0.0, 5.0  # yes = 1, no = 2; id 3 is ignored
    logits[1, 1], logits[1, 2] = 0.0, 0.0
    assert yes_probability_from_logits(logits, 1, 2).tolist() == pytest.approx([0.75, 0.5])


def test_compbench_scorer_multiplies_fixed_answers_over_noun_phrases():
    answers = {"a green bench?": 0.9, "a blue bowl?": 0.5}
    asked = []

    def vqa(image, questions):
        asked.append(list(questions))
        return [answers[q] for q in questions]

    s = CompBenchVqaScorer(vqa=vqa)
    assert s.score(IMAGE, "a green bench and a blue bowl") == pytest.approx({"compbench_vqa": 0.45})
    assert asked == [["a green bench?", "a blue bowl?"]]
    assert s.last_answers == [("a green bench?", 0.9), ("a blue bowl?", 0.5)]
    one = CompBenchVqaScorer(vqa=vqa, max_phrases=1)
    assert one.score(IMAGE, "a green bench and a blue bowl") == pytest.approx({"compbench_vqa": 0.9})


def test_compbench_val_prompts_and_a_clear_error_when_absent(tmp_path, monkeypatch):
    colour = compbench_prompts("color", "val")
    lines = [x for x in (dataset_dir() / "color_val.txt").read_text().splitlines() if x.strip()]
    assert colour == [x.strip() for x in lines] and colour[0] == "a green bench and a blue bowl"
    assert {len(compbench_prompts(c)) for c in ("color", "shape", "texture")} == {300}
    with pytest.raises(BadOption, match="unknown T2I-CompBench category"):
        compbench_prompts("colour")
    monkeypatch.setenv("ATTNLENS_DATASETS", str(tmp_path))
    (tmp_path / "t2i-compbench").mkdir()
    (tmp_path / "t2i-compbench" / "color_val.txt").write_text("a red cat\n\na blue dog\n")
    assert compbench_prompts("color") == ["a red cat", "a blue dog"]
    with pytest.raises(NotFoundError, match="prompt files not found"):
        compbench_prompts("color", root=tmp_path / "nowhere")


# ------------------------------------------------------------------------------------------------ GenEval
def test_relative_position_and_iou_by_hand():
    a, b = Box("cat", (0, 0, 10, 10)), Box("dog", (50, 0, 60, 10))
    assert relative_position(a, b) == {"left of"} and relative_position(b, a) == {"right of"}
    below = Box("dog", (0, 50, 10, 60))
    assert relative_position(below, a) == {"below"} and relative_position(a, below) == {"above"}
    assert relative_position(a, Box("dog", (1, 1, 11, 11))) == set()  # overlapping: within the size margin
    diag = Box("dog", (50, 50, 60, 60))
    assert relative_position(a, diag) == {"left of", "above"}  # dx = dy = −0.707
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)


def test_counting_uses_the_counting_threshold():
    boxes = [Box("dog", (i * 20, 0, i * 20 + 10, 10), s) for i, s in enumerate([0.99, 0.95, 0.8])]
    meta = {"tag": "counting", "include": [{"class": "dog", "count": 3}], "exclude": [{"class": "dog", "count": 4}]}
    detector = lambda image: boxes  # noqa: E731
    s = GenEvalScorer(detector, metadata_for=lambda p: meta)
    assert s.score(IMAGE, "a photo of three dogs") == {"geneval_correct": 0.0}  # 0.8 < 0.9: two dogs kept
    assert s.last_reasons == ["expected dog>=3, found 2"]
    assert GenEvalScorer(detector, counting_threshold=0.5).score(IMAGE, "three dogs", metadata=meta) == {
        "geneval_correct": 1.0}
    four = boxes + [Box("dog", (80, 0, 90, 10), 0.99)]
    assert GenEvalScorer(lambda image: four, counting_threshold=0.5).score(IMAGE, "x", metadata=meta) == {
        "geneval_correct": 0.0}  # the exclude clause: four dogs is not three


def test_colour_position_and_two_object_rules():
    cat, dog = Box("cat", (0, 0, 10, 10), 0.9, "red"), Box("dog", (50, 0, 60, 10), 0.9, "blue")
    kept = keep_boxes([cat, dog, Box("cat", (0, 0, 10, 10), 0.2, "blue")])  # 0.2 ≤ 0.3: dropped
    assert kept == {"cat": [cat], "dog": [dog]}
    two = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}
    assert check(kept, two) == (True, [])
    assert check({"cat": [cat]}, two) == (False, ["expected dog>=1, found 0"])
    colours = {"tag": "color_attr", "include": [{"class": "cat", "count": 1, "color": "red"},
                                                {"class": "dog", "count": 1, "color": "red"}]}
    ok, why = check(kept, colours)
    assert not ok and why == ["expected red dog>=1, found 0 red; and 1 blue"]
    right = {"tag": "position", "include": [{"class": "cat", "count": 1},
                                            {"class": "dog", "count": 1, "position": ["right of", 0]}]}
    assert check(kept, right) == (True, [])
    left = {**right, "include": [right["include"][0], {"class": "dog", "count": 1, "position": ["left of", 0]}]}
    assert check(kept, left) == (False, ["expected dog left of target, found right of target"])
    no_target = {"tag": "position", "include": [{"class": "bird", "count": 1},
                                                {"class": "dog", "count": 1, "position": ["right of", 0]}]}
    assert check(kept, no_target)[1][-1] == "no target for dog to be right of"


def test_nms_keeps_the_most_confident_of_overlapping_boxes():
    a, b = Box("cat", (0, 0, 10, 10), 0.9), Box("cat", (1, 0, 11, 10), 0.8)
    assert keep_boxes([b, a]) == {"cat": [a, b]}  # max_overlap 1.0: no suppression (released default)
    assert keep_boxes([b, a], max_overlap=0.5) == {"cat": [a]}


def test_the_shapes_evaluator_is_a_geneval_detector():
    img = render([RenderedObject("red", "circle", None, 16, (8, 6, 24, 22)),
                  RenderedObject("blue", "square", None, 18, (36, 38, 54, 56))])
    boxes = shapes_detector(img)
    assert sorted((b.label, b.colour) for b in boxes) == [("circle", "red"), ("square", "blue")]
    circle = next(b for b in boxes if b.label == "circle")
    assert circle.box[0] < 30 and circle.box[2] < 30  # left half, (x0, y0, x1, y1) in pixels
    s = GenEvalScorer()
    assert s.score(img, "a red circle and a blue square") == {"geneval_correct": 1.0}
    assert s.score(img, "a blue circle and a red square") == {"geneval_correct": 0.0}
    assert s.score(img, "a red circle and a green triangle") == {"geneval_correct": 0.0}
    assert caption_metadata("a red circle next to a red circle")["include"] == [
        {"class": "circle", "count": 2, "color": "red"}]
    with pytest.raises(BadOption, match="GenEval metadata"):
        s.score(img, "a photo of a cat")


# ------------------------------------------------------------------------------------------------ registry
def test_one_registry_for_sweep_and_score():
    assert {"shapes", "clip", "ae-clip", "ae-text-text", "compbench-vqa", "geneval"} <= set(S.available_scorers())
    lazy = S.get_scorer("clip")  # defaults: the published model, loaded on the first call only
    assert isinstance(lazy, S.LazyScorer) and lazy._built is None
    geneval = S.get_scorer("geneval", threshold=0.5)  # with options: built on its first call, then kept
    assert S.get_scorer("geneval:threshold=0.5") is geneval and S.get_scorer("geneval", threshold=0.6) is not geneval
    assert geneval(IMAGE, "a red circle") == {"geneval_correct": 0.0}  # nothing drawn
    assert isinstance(geneval.built, GenEvalScorer) and geneval.built.threshold == 0.5
    assert S.registry.parse_scorer_spec("clip:model_id=a/b, weight=2.5,prefix=A photo") == (
        "clip", {"model_id": "a/b", "weight": 2.5, "prefix": "A photo"})
    with pytest.raises(BadOption, match="is not key=value"):
        S.get_scorer("clip:model_id")
    with pytest.raises(NotFoundError, match="unknown scorer 'clips'"):
        S.get_scorer("clips")
    with pytest.raises(BadOption, match="takes no option 'model_id'"):
        S.get_scorer("geneval", model_id="x")
    with pytest.raises(BadOption, match="'shapes' takes no options"):
        S.get_scorer("shapes", threshold=0.5)
    calls = []

    lazy = S.register_scorer("test-lazy", factory=lambda: (lambda run, prompt=None: calls.append(run) or {"x": 1.0}))
    assert S.get_scorer("test-lazy") is lazy
    assert calls == [] and S.get_scorer("test-lazy")("run") == {"x": 1.0} and calls == ["run"]


def test_inputs_and_model_locations_fail_with_one_line_errors(tmp_path):
    with pytest.raises(BadOption, match="no prompt"):
        S.resolve_input(IMAGE)
    with pytest.raises(BadOption, match=r"\(H, W, 3\)"):
        S.resolve_input(np.zeros((4, 4)), "x")
    with pytest.raises(ModelNotFound, match="holds no config.json"):
        S.model_location(tmp_path)
    with pytest.raises(ModelNotFound, match="not a hub id"):
        S.model_location("no-such-model")
    assert S.model_location("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"

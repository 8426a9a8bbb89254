"""The run-path-and-reuse rule (attnlens.sweep): where a (prompt, method, seed) run goes, how prompts become folder
names, and when a run already at that path is reused. Runs are real stores written by ``attnlens.store.RunWriter``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attnlens.errors import AttnlensError
from attnlens.store import MANIFEST, STATUS_FAILED, RunWriter
from attnlens.sweep import SLUG_LIMIT, complete_run, reusable, run_name, run_path, slugify, sweep_paths

PROMPT = "a red crown and a golden strawberry"


def _run(path: Path, *, status: str | None = "complete", prompt: str = PROMPT, seed: int = 1, method="syngen",
         steps: int = 50, **extra) -> Path:
    """A run store whose manifest says what ``attnlens.sample`` would: prompt, seed, method, steps and ``extra``.
    ``status=None`` leaves it running (as after a crash)."""
    writer = RunWriter(path, {"prompt": prompt, "seed": seed, "steps": steps,
                              "method": None if method is None else {"name": method, "hyperparameters": {}}, **extra})
    if status is not None:
        writer.finish(status)
    return path


# -- paths ------------------------------------------------------------------------------------------------------

def test_path_of_a_prompt_method_and_seed(tmp_path):
    assert run_path(tmp_path, PROMPT, run_name("syngen"), 2) == tmp_path / "a-red-crown-and-a-golden-strawberry" / "syngen-seed2"
    assert run_path("runs", "A red crown", run_name("none"), 0) == Path("runs/a-red-crown/none-seed0")
    assert run_path(tmp_path, PROMPT, "x", 0, slug_limit=5) == tmp_path / "a-red" / "x-seed0"


def test_run_names_of_methods_and_labels():
    assert [run_name(m) for m in ("none", "syngen", "syngen-entropy", "attend-excite", "divide-bind")] == \
        ["none", "syngen", "syngen-entropy", "attend-excite", "divide-bind"]
    # a method from a file is named by the file's stem, slugged
    assert run_name("losses/My_Loss.py:guide") == "my-loss" == run_name("losses/My_Loss.py")
    # a benchmark label: spaces become _, '=' and '/' become -
    assert run_name("syngen", label="syngen step_size=5") == "syngen_step_size-5"
    assert run_name("syngen", label="a/b c") == "a-b_c"
    assert run_name("syngen", label="positive-only") == "positive-only"
    assert run_name("syngen", label=None) == run_name("syngen", label="") == "syngen"


@pytest.mark.parametrize("text, slug", [
    ("A Red CROWN", "a-red-crown"),
    ("a red crown, and... a golden strawberry!?", "a-red-crown-and-a-golden-strawberry"),
    ("  --a   b--  ", "a-b"),
    ("photo #3 of 10", "photo-3-of-10"),
    ("café naïve", "caf-na-ve"),                  # non-ASCII letters are separators, not transliterated
    ("猫と犬", "prompt"),                          # nothing ASCII left
    ("", "prompt"),
    ("!!! ???", "prompt"),
])
def test_slug_edge_cases(text, slug):
    assert slugify(text) == slug


def test_slug_of_a_very_long_prompt():
    words = " ".join(f"word{i}" for i in range(40))
    slug = slugify(words)
    assert len(slug) <= SLUG_LIMIT == 60 and words.replace(" ", "-").startswith(slug)
    assert not slug.endswith("-")  # cut at the limit, then no dangling separator
    cut = slugify("a" * 59 + " b")  # the 60th character is the separator
    assert cut == "a" * 59
    assert slugify("x" * 500, limit=40) == "x" * 40
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", slugify("Ünï ©ode — 10% off: «a» & 'b' " * 9))


def test_sweep_paths_cover_the_grid_prompt_major(tmp_path):
    got = sweep_paths(tmp_path, ["a cat", "a dog"], [0, 3], "none")
    assert got == [(p, s, run_path(tmp_path, p, "none", s)) for p in ("a cat", "a dog") for s in (0, 3)]


@pytest.mark.parametrize("prompts, seeds, message", [
    (["a cat", "A cat!"], [0], "would share the run folder"),        # same slug
    (["猫", "犬"], [0], "would share the run folder"),                # both 'prompt'
    (["x" * 60 + " one", "x" * 60 + " two"], [0], "would share"),    # differ after the limit
    (["a cat", "a cat"], [0], "given twice"),
    (["a cat"], [1, 1], "given twice"),
])
def test_sweep_paths_refuse_two_runs_in_one_folder(tmp_path, prompts, seeds, message):
    with pytest.raises(AttnlensError, match=message) as info:
        sweep_paths(tmp_path, prompts, seeds, "none")
    assert info.value.hint and "\n" not in str(info.value)


# -- reuse ------------------------------------------------------------------------------------------------------

def _same(path, **changes):
    want = dict(prompt=PROMPT, seed=1, method="syngen", steps=50, settings={"label": None, "analysis_options": {}})
    want.update(changes)
    return reusable(path, **want)


def test_a_complete_run_with_the_same_settings_is_reused(tmp_path):
    path = _run(tmp_path / "r", label=None, analysis_options={})
    assert complete_run(path) and _same(path)


@pytest.mark.parametrize("change", [
    {"prompt": "a red crown"}, {"seed": 2}, {"method": "attend-excite"}, {"steps": 49},
    {"settings": {"label": "x", "analysis_options": {}}},
    {"settings": {"label": None, "analysis_options": {"pos_only": True}}},
    {"settings": {"label": None, "analysis_options": {}, "guidance_scale": 7.5}},  # a setting the run lacks
])
def test_a_complete_run_with_other_settings_is_recorded_again(tmp_path, change):
    path = _run(tmp_path / "r", label=None, analysis_options={})
    assert _same(path) and not _same(path, **change)


def test_settings_compare_as_stored_json(tmp_path):
    path = _run(tmp_path / "r", bench_options={"sizes": [1, 2]}, guidance_scale=7.5, label="syngen step_size=5")
    settings = {"bench_options": {"sizes": (1, 2)}, "guidance_scale": 7.5, "label": "syngen step_size=5"}
    assert reusable(path, prompt=PROMPT, seed=1, method="syngen", steps=50, settings=settings)
    assert reusable(path, prompt=PROMPT, seed=1, method="syngen", steps=50)  # no further settings asked for


@pytest.mark.parametrize("status", [None, STATUS_FAILED])
def test_an_incomplete_run_is_never_reused(tmp_path, status):
    path = _run(tmp_path / "r", status=status, label=None, analysis_options={})
    assert not complete_run(path) and not _same(path)


def test_no_run_or_an_unreadable_one_is_not_reused(tmp_path):
    assert not complete_run(tmp_path / "missing") and not _same(tmp_path / "missing")
    (tmp_path / "folder").mkdir()
    assert not complete_run(tmp_path / "folder") and not _same(tmp_path / "folder")
    path = _run(tmp_path / "r", label=None, analysis_options={})
    (path / MANIFEST).write_text('{"status": "compl')  # torn write
    assert not complete_run(path) and not _same(path)


def test_a_run_without_a_method_record_is_not_reused(tmp_path):
    path = _run(tmp_path / "r", method=None, label=None, analysis_options={})
    assert complete_run(path) and not _same(path)

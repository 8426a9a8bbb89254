"""The demo's variants: on a testbed caption it adds the ground-truth-box edit, elsewhere not."""

from __future__ import annotations

from attnlens.demo import METHODS, PROMPT, PROMPT_OPEN, SWAP, is_testbed_caption, variants


def test_the_shapes_prompt_gets_the_box_edit_and_the_open_prompt_does_not():
    assert is_testbed_caption(PROMPT) and not is_testbed_caption(PROMPT_OPEN)
    labels = [label for label, _ in variants(SWAP[PROMPT], mask=is_testbed_caption(PROMPT))]
    assert labels == ["none", "none + swap(red,blue)", "none + mask-gt", *METHODS[1:]]
    assert dict(variants(None, mask=True))["none + mask-gt"] == ["--method", "none", "--intervene", "mask-gt"]
    assert [label for label, _ in variants(SWAP[PROMPT_OPEN])] == ["none", "none + swap(red,golden)", *METHODS[1:]]

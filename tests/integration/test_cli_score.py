"""``attnlens score``: scores into each run's scores.json and ROOT/scores.csv, resumable, picked up by
``attnlens analyze`` as metrics score/<key>; bad input fails in one line without touching what was written."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import attnlens
from attnlens.scoring import GenEvalScorer, score_rows
from attnlens.store.scores import read_scores

PROMPTS = ("a red circle and a blue square", "a green triangle")


@pytest.fixture(scope="module")
def root(tiny_pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("score") / "runs"
    for i, prompt in enumerate(PROMPTS):
        attnlens.sample(tiny_pipe, prompt, seed=i, out=root / f"r{i}", num_inference_steps=2)
    return root


def test_score_writes_each_run_and_the_table_then_resumes(run_cli, root):
    code, out, err = run_cli("score", root, "--scorer", "geneval", "--format", "json")
    assert code == 0, err
    res = json.loads(out)
    assert (res["scored"], res["reused"]) == (2, 0)
    table = pd.read_csv(root / "scores.csv")
    assert sorted(table["prompt"]) == sorted(PROMPTS)
    assert list(table.columns[:6]) == ["run", "method", "variant", "prompt", "seed", "sample"]
    for row in table.itertuples():
        run = attnlens.open_run(row.run)
        expect = GenEvalScorer().score(run)["geneval_correct"]
        assert row.geneval_correct == expect == run.scores()["geneval_correct"]
        assert read_scores(row.run)["scorers"]["geneval"]["options"] == {}
    code, out, _ = run_cli("score", root, "--scorer", "geneval", "--format", "json")
    assert (json.loads(out)["scored"], json.loads(out)["reused"]) == (0, 2)
    code, out, _ = run_cli("score", root, "--scorer", "geneval", "--rescore", "-O", "threshold=0.5", "--json")
    assert json.loads(out)["scored"] == 2
    assert read_scores(root / "r0")["scorers"]["geneval"]["options"] == {"threshold": 0.5}


def test_scores_sit_beside_other_scorers_and_reach_the_analysis_table(run_cli, root, tmp_path):
    assert run_cli("score", root, "--scorer", "geneval")[0] == 0
    code, _, err = run_cli("score", root / "r0", "--scorer", "clip", "--model-id", "attnlens-tiny-clip")
    assert code == 0, err
    scores = attnlens.open_run(root / "r0").scores()
    assert set(scores) == {"geneval_correct", "clip_score"}
    out = tmp_path / "m.parquet"
    code, _, err = run_cli("analyze", root, "--metric", "score/*", "--out", out)
    assert code == 0, err
    df = pd.read_parquet(out)
    assert set(df["metric"]) == {"score/geneval_correct", "score/clip_score"}
    assert set(df["role"]) == {"image"} and set(df["layer"]) == {"-"} and set(df["step"]) == {-1}
    r0 = df[(df["run"] == str(root / "r0")) & (df["metric"] == "score/clip_score")]
    assert r0["value"].tolist() == [pytest.approx(scores["clip_score"])]
    long = score_rows(pd.read_csv(root / "scores.csv"))
    assert set(long["metric"]) >= {"score/geneval_correct"} and set(long["role"]) == {"image"}


def test_bad_input_fails_in_one_line_and_leaves_scores_alone(run_cli, root, tmp_path):
    assert run_cli("score", root, "--scorer", "geneval")[0] == 0
    before = (root / "r0" / "scores.json").read_bytes()
    for args, message in [
        (("--scorer", "clips"), "unknown scorer 'clips'"),
        (("--scorer", "geneval", "--model-id", "x"), "takes no option 'model_id'"),
        (("--scorer", "clip", "--model-id", str(tmp_path)), "holds no config.json"),
        (("--scorer", "clip", "--model-id", "no/such-model-here"), "could not load CLIPModel"),
        (("--scorer", "geneval", "-O", "threshold"), "is not key=value"),
    ]:
        code, out, err = run_cli("score", root, *args)
        assert code == 2 and message in err and "Traceback" not in err, (args, err)
    assert (root / "r0" / "scores.json").read_bytes() == before


def test_a_scored_run_can_be_recorded_again(tiny_pipe, root, run_cli, tmp_path):
    run = tmp_path / "again"
    attnlens.sample(tiny_pipe, PROMPTS[1], seed=0, out=run, num_inference_steps=2)
    assert run_cli("score", run, "--scorer", "geneval")[0] == 0 and (run / "scores.json").exists()
    attnlens.sample(tiny_pipe, PROMPTS[1], seed=0, out=run, num_inference_steps=2, overwrite=True)
    assert not (run / "scores.json").exists()  # the scores of the old image went with it

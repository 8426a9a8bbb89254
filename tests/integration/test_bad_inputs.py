"""Bad input, table-driven: every entry is refused with one error line (and at most one hint) that says what to do,
exit status 2, no traceback, no "unexpected", and every other run under the root byte-identical afterwards.

The table covers the command line (typos, out-of-range and malformed values, files that are not what they should
be), the Python API, damaged stores (manifests, zarr metadata, chunks, images, links) read by every command, and
dashboard URLs. Each entry names what it feeds; the damaged-store entries damage a *copy* of a recorded run, so the
other run in the root is the witness that nothing else was touched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

import attnlens
from attnlens.errors import AttnlensError

P = "a red circle and a blue square"


# ------------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def recorded(tiny_pipe, tmp_path_factory) -> Path:
    """Two complete runs (none and syngen, 2 steps) of one prompt: the root every entry starts from."""
    root = tmp_path_factory.mktemp("bad-inputs-recorded")
    slug = "-".join(P.split())
    for method in ("none", "syngen"):
        attnlens.sample(tiny_pipe, P, method=method, seed=1, num_inference_steps=2, out=root / slug / f"{method}-seed1",
                        method_options={"intervention_steps": 1} if method != "none" else None)
    return root


def tree_digest(root: Path, skip: Path | None = None) -> dict[str, str]:
    """SHA-256 of every file under ``root`` (but ``skip``'s), by relative path; links by their target."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            f = Path(dirpath) / name
            if skip is not None and (f == skip or skip in f.parents):
                continue
            key = str(f.relative_to(root))
            out[key] = ("link:" + os.readlink(f)) if f.is_symlink() else hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@dataclass
class Case:
    id: str
    argv: list[str]                                   # {root} {run} {victim} {tmp} are filled in
    damage: Callable[[Path, Path], object] | None = None   # (victim run, tmp) -> anything
    needs: list[str] = field(default_factory=list)


def _chunks(run: Path) -> list[Path]:
    """The sample-phase map chunk files of ``run`` (``maps/c.<step>.<phase>.<iteration>...``, phase 0 = sample)."""
    return sorted((run / "data.zarr" / "attention").glob("*/maps/c.*.0.0.*"))


def _edit(run: Path, **changes) -> None:
    f = run / "manifest.json"
    m = json.loads(f.read_text())
    m.update(changes)
    f.write_text(json.dumps(m))


def _layer_meta(run: Path) -> Path:
    return sorted((run / "data.zarr" / "attention").glob("*/maps/zarr.json"))[0]


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _link_manifest_outside(run: Path, tmp: Path) -> None:
    outside = tmp / "elsewhere.json"
    shutil.copy(run / "manifest.json", outside)
    (run / "manifest.json").unlink()
    (run / "manifest.json").symlink_to(outside)


CLI_CASES = [
    # typos and malformed flags
    Case("record-typo-flag", ["record", P, "--seeds", "1"]),
    Case("record-typo-flag-2", ["record", P, "--mehtod", "syngen"]),
    Case("typo-command", ["recrod", P]),
    Case("record-steps-abc", ["record", P, "--steps", "abc"]),
    Case("record-seed-overflow", ["record", P, "--seed", "18446744073709551616"]),
    Case("record-seed-float", ["record", P, "--seed", "1.5"]),
    Case("record-height-negative", ["record", P, "--height", "-64"]),
    Case("record-height-zero", ["record", P, "--height", "0"]),
    Case("record-cannot-fit", ["record", P, "--height", "100000", "--width", "100000"]),
    Case("record-guidance-nan", ["record", P, "--guidance-scale", "nan"]),
    Case("record-guidance-inf", ["record", P, "--guidance-scale", "inf"]),
    Case("record-guidance-negative", ["record", P, "--guidance-scale", "-1"]),
    Case("record-steps-outside", ["record", P, "--n-steps", "2", "--record-steps", "5:9"]),
    Case("record-n-steps-zero", ["record", P, "--n-steps", "0"]),
    Case("record-n-steps-negative", ["record", P, "--n-steps", "-3"]),
    Case("record-empty-prompt", ["record", ""]),
    Case("record-no-prompt", ["record"]),
    Case("record-binary-prompts-file", ["record", "--prompts-file", "{tmp}/binary.txt"],
         damage=lambda v, t: _write(t / "binary.txt", bytes(range(256)) * 4)),
    Case("record-nul-prompts-file", ["record", "--prompts-file", "{tmp}/nul.txt"],
         damage=lambda v, t: _write(t / "nul.txt", b"a red circle\x00\n")),
    Case("record-missing-prompts-file", ["record", "--prompts-file", "{tmp}/nope.txt"]),
    Case("record-unknown-method", ["record", P, "--method", "syngne"]),
    Case("record-method-file-missing", ["record", P, "--method", "{tmp}/nope.py:loss"]),
    Case("record-method-attr-missing", ["record", P, "--method", "{tmp}/loss.py:missing"],
         damage=lambda v, t: _write(t / "loss.py", b"def loss(maps, parse, i):\n    return 0\n")),
    Case("record-method-import-error", ["record", P, "--method", "{tmp}/broken.py:loss"],
         damage=lambda v, t: _write(t / "broken.py", b"import not_a_module_anywhere\n")),
    Case("record-user-loss-raises", ["record", P, "--method", "{tmp}/raise.py:loss", "--n-steps", "2"],
         damage=lambda v, t: _write(t / "raise.py", b"def loss(maps, parse, i):\n    raise RuntimeError('boom')\n")),
    Case("record-unknown-method-option", ["record", P, "--method", "syngen", "-O", "nokey=1"]),
    Case("record-bad-method-option-value", ["record", P, "--method", "syngen", "-O", "step_size=abc"]),
    Case("record-method-option-no-equals", ["record", P, "--method", "syngen", "-O", "step_size"]),
    Case("record-bind-malformed", ["record", P, "--method", "syngen", "--bind", "garbage"]),
    Case("record-bind-unknown-word", ["record", P, "--method", "syngen", "--bind", "green>hexagon"]),
    Case("record-heads", ["record", P, "--heads", "foo"]),
    Case("record-tokens", ["record", P, "--tokens", "foo"]),
    Case("record-layers-none-match", ["record", P, "--n-steps", "1", "--layers", "nosuchlayer"]),
    Case("record-dtype", ["record", P, "--dtype", "fp8"]),
    Case("record-model-dtype", ["record", P, "--model", "{tiny}", "--model-dtype", "fp7"]),
    Case("record-model-missing-folder", ["record", P, "--model", "{tmp}/nomodel"]),
    Case("record-model-offline-hub-id", ["record", P, "--model", "someone/no-such-model"]),
    Case("record-device-tpu", ["record", P, "--model", "{tiny}", "--device", "tpu9"]),
    Case("record-device-cuda-absent", ["record", P, "--model", "{tiny}", "--device", "cuda"], needs=["no-cuda"]),
    Case("record-spacy-model", ["record", P, "--method", "syngen", "--spacy-model", "xx_nope"]),
    Case("record-format", ["record", P, "--format", "yaml"]),
    Case("record-over-complete-run", ["record", P, "--seed", "1", "--out", "{root}"]),
    # looking at runs
    Case("ls-file", ["ls", "{tmp}/file.txt"], damage=lambda v, t: _write(t / "file.txt", b"x")),
    Case("ls-missing", ["ls", "{tmp}/nonexistent"]),
    Case("info-missing", ["info", "{tmp}/nonexistent"]),
    Case("info-not-a-run", ["info", "{tmp}"]),
    Case("parse-empty", ["parse", ""]),
    Case("parse-spacy-model", ["parse", P, "--spacy-model", "xx_nope"]),
    Case("parse-copula", ["parse", P, "--copula", "sideways"]),
    # analysis
    Case("analyze-metric", ["analyze", "{root}", "--metric", "nosuch", "-o", "{tmp}/m.parquet"]),
    Case("analyze-steps", ["analyze", "{root}", "--steps", "abc", "-o", "{tmp}/m.parquet"]),
    Case("analyze-phase", ["analyze", "{root}", "--phase", "foo", "-o", "{tmp}/m.parquet"]),
    Case("analyze-out-suffix", ["analyze", "{root}", "-o", "{tmp}/m.txt"]),
    Case("compare-by", ["compare", "{root}", "--by", "foo"]),
    Case("compare-n-boot", ["compare", "{root}", "--n-boot", "0"]),
    Case("compare-ci", ["compare", "{root}", "--ci", "1.5"]),
    Case("compare-out-suffix", ["compare", "{root}", "-o", "{tmp}/table.unknown"]),
    Case("figure-kind", ["figure", "nosuch", "{root}", "-o", "{tmp}/f.pdf"]),
    Case("figure-format", ["figure", "maps", "{root}", "-o", "{tmp}/f.xyz"]),
    Case("figure-token", ["figure", "maps", "{root}", "--token", "notaword", "-o", "{tmp}/f.pdf"]),
    Case("figure-width", ["figure", "maps", "{root}", "--width", "-3", "-o", "{tmp}/f.pdf"]),
    Case("bench-prompts", ["bench", "binding", "--prompts", "-1", "--out", "{tmp}/bench"]),
    Case("testbed-render-n", ["testbed", "render", "--n", "-1", "--out", "{tmp}/render"]),
]

# damaged stores: the victim is a copy of the syngen run; each command below is run on each damage
DAMAGES = {
    "manifest-garbage": lambda v, t: _write(v / "manifest.json", b"\x00\xffgarbage"),
    "manifest-list": lambda v, t: _write(v / "manifest.json", b"[1, 2]"),
    "manifest-seed-string": lambda v, t: _edit(v, seed="abc"),
    "manifest-steps-string": lambda v, t: _edit(v, steps="many"),
    "manifest-huge-numbers": lambda v, t: _edit(v, steps=10**30, seed=10**40),
    "manifest-records-string": lambda v, t: _edit(v, records="x"),
    "manifest-images-list": lambda v, t: _edit(v, images=["/etc/hostname"]),
    "manifest-link-outside": _link_manifest_outside,
    "root-zarr-json-garbage": lambda v, t: _write(v / "data.zarr" / "zarr.json", b"{not json"),
    "layer-zarr-json-garbage": lambda v, t: _write(_layer_meta(v), b"{oops"),
    "layer-zarr-json-wrong": lambda v, t: _write(_layer_meta(v), b'{"zarr_format": 3, "node_type": "array"}'),
    "chunk-truncated": lambda v, t: os.truncate(_chunks(v)[0], 5),
    "chunk-random-bytes": lambda v, t: _write(_chunks(v)[0], bytes(range(256)) * 2),
    "chunk-deleted": lambda v, t: _chunks(v)[0].unlink(),
    "data-deleted": lambda v, t: shutil.rmtree(v / "data.zarr"),
}
STORE_COMMANDS = {
    "info": ["info", "{victim}", "--check"],
    "analyze": ["analyze", "{root}", "-o", "{tmp}/m.parquet"],
    "figure": ["figure", "maps", "{root}", "-o", "{tmp}/f.png"],
}
#: a damaged manifest makes the run unreadable: analyze and figure skip it as "not complete" and say so — with a
#: good run beside it they go on; these pairs are therefore expected to succeed (exit 0) and say what they skipped
SKIPPED_NOT_REFUSED = {"manifest-garbage", "manifest-list", "manifest-seed-string", "manifest-steps-string",
                       "manifest-huge-numbers", "manifest-records-string", "manifest-images-list",
                       "manifest-link-outside"}

STORE_CASES = [Case(f"{damage}-{cmd}", argv, damage=DAMAGES[damage])
               for damage in DAMAGES for cmd, argv in STORE_COMMANDS.items()
               if not (damage in SKIPPED_NOT_REFUSED and cmd != "info")]
STORE_SKIPS = [Case(f"{damage}-{cmd}-skips", argv, damage=DAMAGES[damage])
               for damage in sorted(SKIPPED_NOT_REFUSED) for cmd, argv in STORE_COMMANDS.items() if cmd != "info"]


def _prepare(case: Case, recorded: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    root = tmp_path / "root"
    shutil.copytree(recorded, root, symlinks=True)
    victim = next(root.rglob("syngen-seed1"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if case.damage is not None:
        case.damage(victim, scratch)
    return root, victim, scratch


def _argv(case: Case, root: Path, victim: Path, scratch: Path) -> list[str]:
    tiny = attnlens.models.embedded_model_path("attnlens-tiny")  # a folder: loaded for real, not the test's pipe
    argv = [a.format(root=root, victim=victim, tmp=scratch, tiny=tiny) for a in case.argv]
    if argv[0] == "record" and "--out" not in argv:
        argv += ["--out", str(scratch / "out")]
    return argv


def _assert_refused(code: int, err: str, case_id: str) -> None:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, f"{case_id}: exit {code}\n{err}"
    assert "Traceback" not in err and "unexpected" not in err, f"{case_id}:\n{err}"
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, f"{case_id}: expected one error line\n{err}"
    hints = [line for line in lines if line.startswith("hint: ")]
    assert len(hints) <= 1, f"{case_id}:\n{err}"
    assert all(line.startswith(("error: ", "hint: ", "warning: ")) for line in lines), f"{case_id}: stray output\n{err}"
    assert len(errors[0]) > len("error: ") + 10, f"{case_id}: an empty message\n{err}"


@pytest.mark.parametrize("case", CLI_CASES + STORE_CASES, ids=lambda c: c.id)
def test_bad_input_is_refused_with_one_line_and_exit_2(case, recorded, tmp_path, run_cli):
    if "no-cuda" in case.needs and __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    root, victim, scratch = _prepare(case, recorded, tmp_path)
    witness = tree_digest(root, skip=victim)
    code, out, err = run_cli(*_argv(case, root, victim, scratch))
    _assert_refused(code, err, case.id)
    assert tree_digest(root, skip=victim) == witness, f"{case.id}: another run was changed"


@pytest.mark.parametrize("case", STORE_SKIPS, ids=lambda c: c.id)
def test_a_run_with_a_damaged_manifest_is_skipped_and_named(case, recorded, tmp_path, run_cli):
    root, victim, scratch = _prepare(case, recorded, tmp_path)
    witness = tree_digest(root, skip=victim)
    code, out, err = run_cli(*_argv(case, root, victim, scratch))
    assert code == 0, err
    assert "Traceback" not in err and "unexpected" not in err
    assert "skipped" in err and "none-seed1" not in err  # the good run is used, the damaged one is said skipped
    assert tree_digest(root, skip=victim) == witness


def test_a_user_loss_that_raises_names_the_method_and_step_and_marks_the_run_failed(recorded, tmp_path, run_cli):
    loss = tmp_path / "raise.py"
    loss.write_text("def loss(maps, parse, i):\n    raise RuntimeError('boom')\n")
    code, _, err = run_cli("record", P, "--method", f"{loss}:loss", "--n-steps", "2", "--out", tmp_path / "out")
    assert code == 2 and "raise.py:loss" in err and "RuntimeError at step 0: boom" in err
    run = attnlens.open_run(next(attnlens.find_runs(tmp_path / "out")))
    assert run.status == "failed" and "boom" in run.manifest["error"]


# ------------------------------------------------------------------------------------------------------ Python API
API_CASES = {
    "sample-seed-overflow": lambda pipe, t: attnlens.sample(pipe, P, seed=2**64, out=t / "r"),
    "sample-steps-zero": lambda pipe, t: attnlens.sample(pipe, P, num_inference_steps=0, out=t / "r"),
    "sample-cannot-fit": lambda pipe, t: attnlens.sample(pipe, P, height=100_000, width=100_000, out=t / "r"),
    "sample-unknown-method": lambda pipe, t: attnlens.sample(pipe, P, method="syngne", out=t / "r"),
    "open-run-missing": lambda pipe, t: attnlens.open_run(t / "nope"),
    "run-unknown-layer": lambda pipe, t: attnlens.open_run(next(attnlens.find_runs(t / "root"))).maps("nosuch"),
    "find-runs-file": lambda pipe, t: list(attnlens.find_runs(t / "scratch" / "f.txt")),
    "get-method-bad-option": lambda pipe, t: attnlens.get_method("syngen", step_size="abc"),
}


@pytest.mark.parametrize("name", sorted(API_CASES))
def test_bad_input_to_the_python_api_raises_an_attnlens_error(name, recorded, tmp_path, tiny_pipe):
    root = tmp_path / "root"
    shutil.copytree(recorded, root)
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "f.txt").write_text("x")
    witness = tree_digest(root)
    with pytest.raises(AttnlensError) as info:
        API_CASES[name](tiny_pipe, tmp_path)
    assert info.value.message and "\n" not in info.value.message
    assert tree_digest(root) == witness
    assert not (tmp_path / "r").exists()  # refused before anything was written


# ------------------------------------------------------------------------------------------------------ dashboard
DASHBOARD_URLS = {
    "run-outside": {"view": "runs", "run": "../../etc"},
    "run-absolute": {"view": "runs", "run": "/etc/passwd"},
    "unknown-prompt": {"prompt": "a prompt nobody recorded"},
    "seed-not-a-number": {"seed": "x"},
    "step-out-of-range": {"step": "99999"},
    "unknown-layer": {"layer": "nosuch.attn2"},
    "unknown-view": {"view": "nope"},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DASHBOARD_URLS))
def test_a_bad_dashboard_url_gets_a_refusal_not_a_crash(name, recorded, tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    import dashboard

    root = tmp_path / "root"
    shutil.copytree(recorded, root)
    witness = tree_digest(root)
    monkeypatch.setenv("ATTNLENS_DASHBOARD_ROOT", str(root))
    at = AppTest.from_file(str(Path(dashboard.__file__).parent / "app.py"), default_timeout=180)
    for k, v in DASHBOARD_URLS[name].items():
        at.query_params[k] = v
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    said = [str(w.value) for w in (*at.warning, *at.error, *at.info)]
    assert any(("Refused" in s or "not" in s or "no " in s) for s in said), (name, said)
    assert tree_digest(root) == witness

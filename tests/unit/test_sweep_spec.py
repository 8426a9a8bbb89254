"""The sweep spec (validation, cells, prompt sets) and the sweep manifest (protocol pinning, cell states), without a
model."""

from __future__ import annotations

import json

import pytest

from attnlens.errors import AttnlensError, ConfigError, NotFoundError
from attnlens.store import RunWriter
from attnlens.sweeps import SweepManifest, cell_states, load_spec, parse_spec, read_sweep
from attnlens.sweeps.manifest import PENDING, model_digest, protocol
from attnlens.sweeps.spec import DATASETS_ENV, prompts_hash

BASE = {"model": "attnlens-tiny", "steps": 2, "prompts": ["a red crown", "a blue cat"], "seeds": [0, 1],
        "methods": [{"name": "none"}, {"name": "syngen", "grid": {"step_size": [10, 20], "distance": ["jsd"]}}]}


def test_cells_are_variants_times_prompts_times_seeds_with_one_folder_each(tmp_path):
    spec = parse_spec(BASE)
    assert [v.label for v in spec.variants] == ["none", "syngen distance=jsd step_size=10",
                                                "syngen distance=jsd step_size=20"]
    cells = spec.cells(tmp_path)
    assert len(cells) == 3 * 2 * 2
    assert len({c.path for c in cells}) == len(cells)
    grid = [c for c in cells if c.variant.options.get("step_size") == 20]
    assert grid[0].path == tmp_path / "a-red-crown" / "syngen_distance-jsd_step_size-20-seed0"
    assert grid[0].variant.options == {"distance": "jsd", "step_size": 20}


@pytest.mark.parametrize("change, words", [
    ({"steps": 0}, "'steps' must be a positive integer"),
    ({"seeds": [1, 1]}, "lists a seed twice"),
    ({"seeds": "0"}, "'seeds' must be a non-empty list"),
    ({"methods": []}, "no methods"),
    ({"methods": [{"name": "syngen", "grid": {"step_size": 10}}]}, "non-empty list"),
    ({"methods": [{"name": "none"}, {"name": "none"}]}, "given twice"),
    ({"methods": [{"name": "nope"}]}, "unknown method 'nope'"),
    ({"prompt_set": "CC-500"}, "exactly one of"),
    ({"seedz": [1]}, "unknown key(s) ['seedz']"),
    ({"images_per_prompt": 2}, "either 'seeds' or 'images_per_prompt'"),
    ({"recording": {"head": "all"}}, "[recording] may hold only"),
    ({"interventions": [{"op": "ablate"}]}, "must be a list of intervention specs"),
    ({"interventions": ["shuffle red blue"]}, "intervention 'shuffle red blue'"),
    ({"prompts": ["A red crown!", "a red crown"]}, "would share the run folder"),
])
def test_bad_specs_are_refused_with_one_line(change, words, tmp_path):
    with pytest.raises(ConfigError) as exc:
        parse_spec({**BASE, **change}, method_names={"none", "syngen"}).cells(tmp_path)
    assert words in exc.value.message and "\n" not in str(exc.value) and exc.value.hint


def test_spec_files_are_toml_and_resolve_prompt_files_beside_them(tmp_path):
    (tmp_path / "p.txt").write_text("# comment\na red crown\n\na blue cat\n")
    f = tmp_path / "s.toml"
    f.write_text('model = "attnlens-tiny"\nprompts_file = "p.txt"\nimages_per_prompt = 3\nlimit = 1\n'
                 '[[methods]]\nname = "none"\n')
    spec = load_spec(f)
    assert spec.prompts == ["a red crown"] and spec.seeds == [0, 1, 2] and spec.prompt_source == "file:p.txt"
    f.write_text('model = "x"\nprompts = [\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_spec(f)
    with pytest.raises(NotFoundError):
        load_spec(tmp_path / "missing.toml")


def test_named_prompt_sets_come_from_the_datasets_folder(tmp_path, monkeypatch):
    (tmp_path / "CC-500.txt").write_text("a red bench and a green car\na blue bench and a red car\n")
    (tmp_path / "attend-excite-prompts.json").write_text(json.dumps({"animals": ["a cat and a dog"],
                                                                     "objects": ["a red ball"]}))
    monkeypatch.setenv(DATASETS_ENV, str(tmp_path))
    without = {k: v for k, v in BASE.items() if k != "prompts"}
    cc = parse_spec({**without, "prompt_set": "CC-500"})
    assert cc.prompts == ["a red bench and a green car", "a blue bench and a red car"]
    assert cc.prompt_source == "set:CC-500"
    assert parse_spec({**without, "prompt_set": "attend-excite/objects"}).prompts == ["a red ball"]
    assert parse_spec({**without, "prompt_set": "attend-excite"}).prompts == ["a cat and a dog", "a red ball"]
    with pytest.raises(ConfigError, match="unknown prompt set 'nope'"):
        parse_spec({**without, "prompt_set": "nope"})
    monkeypatch.setenv(DATASETS_ENV, str(tmp_path / "absent"))
    with pytest.raises(NotFoundError, match="shared datasets folder"):
        parse_spec({**without, "prompt_set": "CC-500"})


def test_the_manifest_pins_the_protocol_and_refuses_another(tmp_path):
    model = tmp_path / "model"
    (model / "scheduler").mkdir(parents=True)
    (model / "scheduler" / "scheduler_config.json").write_text('{"_class_name": "PNDMScheduler"}')
    (model / "weights.bin").write_bytes(b"abc")
    spec = parse_spec(BASE)
    p = protocol(spec, str(model))
    assert p["scheduler"] == "PNDMScheduler" and p["model_digest"] == model_digest(str(model))
    assert p["prompt_set"] == {"source": "inline", "n": 2, "sha256": prompts_hash(["a red crown", "a blue cat"])}
    root = tmp_path / "sweep"
    SweepManifest.create(root, spec, str(model))
    data = read_sweep(root)
    assert [c["state"] for c in data["cells"]] == [PENDING] * 12
    (model / "weights.bin").write_bytes(b"abd")  # other weights: another protocol
    with pytest.raises(ConfigError, match="model_digest"):
        SweepManifest.create(root, spec, str(model))
    with pytest.raises(ConfigError, match="steps"):
        SweepManifest.create(root, parse_spec({**BASE, "steps": 3}), None)
    assert read_sweep(root) == data  # the refused sweep left the manifest as it was


def test_cell_states_are_checked_against_the_run_folders(tmp_path):
    spec = parse_spec(BASE)
    man = SweepManifest.create(tmp_path, spec, None)
    cells = spec.cells(tmp_path)
    man.set(cells[0].id, "complete")  # recorded as done, but its run is gone
    w = RunWriter(cells[1].path, {"prompt": cells[1].prompt, "seed": 0})  # done, but the driver never heard
    w.finish()
    w = RunWriter(cells[2].path, {"prompt": cells[2].prompt, "seed": 0})  # being recorded: lock held, running
    man.set(cells[2].id, "running")
    try:
        states = {c["id"]: c["state"] for c in cell_states(tmp_path)}
    finally:
        w.release()
    assert states[cells[0].id] == "pending"
    assert states[cells[1].id] == "complete"
    assert states[cells[2].id] == "running"
    with pytest.raises(AttnlensError, match="holds no sweep"):
        cell_states(tmp_path / "nothing")


def test_interventions_in_a_spec_are_pinned_and_passed_to_every_cell(tmp_path):
    spec = parse_spec({**BASE, "interventions": ["swap red blue steps=0:1"]})
    assert spec.interventions == ["swap red blue steps=0:1"]
    assert protocol(spec, None)["interventions"] == ["swap red blue steps=0:1"]  # another sweep with other edits is refused


def test_a_sweep_on_a_url_root_keeps_its_manifest_as_one_object_and_reads_the_cells_manifests(tmp_path):
    from attnlens.errors import StoreError
    from attnlens.store.remote import filesystem, publish_run, read_run_manifests, write_json_object
    from attnlens.sweeps.manifest import done_cells

    root = f"memory://bucket/{tmp_path.name}"  # fsspec's in-memory file system: one per process
    spec = parse_spec(BASE)
    cells = spec.cells(root)
    assert cells[0].path == f"{root}/a-red-crown/none-seed0" and cells[0].rel == "a-red-crown/none-seed0"
    man = SweepManifest.create(root, spec, None)
    fs, path = filesystem(root)
    assert fs.ls(path, detail=False) == [f"{path}/sweep.json"]  # one object, nothing else written at the root
    data = read_sweep(root)
    assert data == man.data and [c["state"] for c in data["cells"]] == [PENDING] * 12
    with pytest.raises(ConfigError, match="steps"):
        SweepManifest.create(root, parse_spec({**BASE, "steps": 3}), None)
    assert read_sweep(root) == data

    man.min_interval = 3600  # on a URL root, set() writes at most this often; flush() writes what was held back
    man.set(cells[0].id, "complete")  # recorded as done, but no run on the store
    assert read_sweep(root)["cells"][0]["state"] == PENDING
    man.flush()
    assert read_sweep(root)["cells"][0]["state"] == "complete"
    w = RunWriter(tmp_path / "run", {"prompt": cells[1].prompt, "seed": 0})
    w.finish()
    publish_run(tmp_path / "run", cells[1].path)  # complete, but not with the cell's settings
    done = {"status": "complete", "prompt": cells[2].prompt, "seed": cells[2].seed, "steps": 2,
            "method": {"name": cells[2].variant.method}, "sweep_cell": spec.cell_settings(cells[2])}
    write_json_object(f"{cells[2].path}/manifest.json", done)
    fs.pipe_file(f"{filesystem(cells[3].path)[1]}/manifest.json", b'{"status": "compl')  # a cut manifest
    states = {c["id"]: (c["state"], c["run_status"]) for c in cell_states(root)}
    assert states[cells[0].id] == ("pending", None) and states[cells[1].id] == ("complete", "complete")
    assert states[cells[3].id] == ("pending", None)
    assert done_cells(spec, cells) == {cells[2].id}
    assert read_run_manifests([cells[2].path, cells[4].path]) == {cells[2].path: done, cells[4].path: None}

    fs.pipe_file(f"{path}/sweep.json", b"{not json")
    with pytest.raises(StoreError, match="damaged"):
        read_sweep(root)
    with pytest.raises(AttnlensError, match="holds no sweep"):
        cell_states(f"{root}/nothing")

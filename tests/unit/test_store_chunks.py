"""The fast chunk paths (attnlens.store._fastzarr): ChunkFiles writes exactly the bytes zarr writes, zarr reads them,
and ChunkReader reads what zarr writes."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from attnlens.store import RunWriter
from attnlens.store._fastzarr import ChunkFiles, ChunkReader
from attnlens.store.writer import _compressor


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_chunk_files_match_zarr_bytes(tmp_path, dtype):
    g = zarr.open_group(str(tmp_path / "g"), mode="w", zarr_format=3)
    arr = g.create_array("maps", shape=(4, 3, 2, 5, 7), chunks=(1, 1, 1, 5, 7), dtype=dtype, fill_value=np.nan,
                         compressors=_compressor())
    data = np.random.default_rng(0).random((5, 7)).astype(dtype)
    arr[0, 0, 0] = data  # through zarr
    cf = ChunkFiles.for_array(arr, tmp_path / "g" / "maps")
    assert cf is not None
    cf.write((2, 1, 1), data)  # directly
    folder = tmp_path / "g" / "maps"
    a = (folder / arr.metadata.encode_chunk_key((0, 0, 0, 0, 0))).read_bytes()
    b = (folder / arr.metadata.encode_chunk_key((2, 1, 1, 0, 0))).read_bytes()
    assert a == b
    back = zarr.open_array(str(folder), mode="r")
    np.testing.assert_array_equal(back[2, 1, 1], data)
    assert np.isnan(back[1, 0, 0]).all()
    assert not list(folder.rglob(".*.tmp"))  # no temporary file left behind


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_chunk_reader_reads_what_zarr_writes(tmp_path, dtype):
    g = zarr.open_group(str(tmp_path / "g"), mode="w", zarr_format=3)
    shape = (3, 3, 2, 1, 2, 4, 5, 6)  # MAP_DIMS
    arr = g.create_array("maps", shape=shape, chunks=(1, 1, 1, *shape[3:]), dtype=dtype, fill_value=np.nan,
                         compressors=_compressor(), chunk_key_encoding={"name": "default", "separator": "."})
    data = np.random.default_rng(1).random(shape[3:]).astype(dtype)
    arr[1, 0, 1] = data  # through zarr
    reader = ChunkReader.for_array(arr, tmp_path / "g" / "maps")
    assert reader is not None
    np.testing.assert_array_equal(reader.read(1, 0, 1), data)
    assert np.isnan(reader.read(2, 0, 0)).all()  # never written: the fill value, as zarr reads it
    # and the writer's chunk files read back the same way
    cf = ChunkFiles.for_array(arr, tmp_path / "g" / "maps")
    cf.write((2, 2, 0), data * 0.5)
    np.testing.assert_array_equal(reader.read(2, 2, 0), (data * 0.5).astype(dtype))
    np.testing.assert_array_equal(np.asarray(arr[2, 2, 0]), (data * 0.5).astype(dtype))


def test_unsupported_layout_falls_back_to_zarr(tmp_path):
    g = zarr.open_group(str(tmp_path / "g"), mode="w", zarr_format=3)
    arr = g.create_array("plain", shape=(4,), chunks=(2,), dtype="float32", compressors=None)
    assert ChunkFiles.for_array(arr, tmp_path / "g" / "plain") is None


def test_small_arrays_are_flushed_on_finish(tmp_path):
    w = RunWriter(tmp_path / "run", {"prompt": "p"})
    w.FLUSH_S = 3600.0  # nothing flushes before finish
    data = np.zeros((1, 1, 3, 4, 4), np.float16)
    for step in range(3):
        w.write_map("layer", step, "sample", 0, 3, [["a", "b", "c"]], 900.0 - step, data)
        w.write_scalar("loss", step, 0, 0, float(step), 3, 1)
    w.write_scalar("loss", 4, 1, 0, 7.0, 3, 1)  # grows both axes
    w.finish()
    g = zarr.open_group(str(tmp_path / "run" / "data.zarr"), mode="r")
    np.testing.assert_array_equal(g["attention/layer/timestep"][:], [900.0, 899.0, 898.0])
    loss = g["scalars/loss"][:]
    assert loss.shape == (5, 2, 1) and loss[2, 0, 0] == 2.0 and loss[4, 1, 0] == 7.0 and np.isnan(loss[3, 0, 0])


def _layer_files(folder):
    return {f.relative_to(folder).as_posix(): f for f in folder.rglob("*") if f.is_file() and not f.name.startswith(".")}


def test_layers_from_the_template_match_zarr(tmp_path, monkeypatch):
    """A layer written from the process's template (other tokens, steps and size than the layer zarr created) has the
    metadata zarr would write and reads back through plain zarr with the right coordinates."""
    from attnlens.store import _fastzarr as store

    monkeypatch.setattr(store._LayerTemplate, "_cache", {})
    toks_a, toks_b = [["<sot>", "a", "red", "crown"]], [["<sot>", "a", "golden", "strawberry", "<eot>"]]
    first = RunWriter(tmp_path / "first", {"prompt": "a"})  # creates the template through zarr
    first.write_map("L", 0, "sample", 0, 3, toks_a, 900.0, np.zeros((1, 1, 4, 8, 8), np.float16))
    first.finish()
    assert store._LayerTemplate.get(("float16", 1, 1)) is not None

    data = np.random.default_rng(0).random((1, 1, 5, 4, 4)).astype(np.float16)
    fast = RunWriter(tmp_path / "fast", {"prompt": "b"})  # no zarr: from the template
    for step in range(6):
        fast.write_map("M", step, "sample", 0, 6, toks_b, 800.0 - step, data + step)
    fast.finish()
    monkeypatch.setattr(store._LayerTemplate, "_cache", {})
    ref = RunWriter(tmp_path / "ref", {"prompt": "b"})  # the same layer created by zarr
    for step in range(6):
        ref.write_map("M", step, "sample", 0, 6, toks_b, 800.0 - step, data + step)
    ref.finish()

    a, b = tmp_path / "fast" / "data.zarr" / "attention", tmp_path / "ref" / "data.zarr" / "attention"
    fa, fb = _layer_files(a), _layer_files(b)
    assert fa.keys() == fb.keys()
    import json

    for rel in fa:
        if rel.endswith("zarr.json"):
            assert json.loads(fa[rel].read_bytes()) == json.loads(fb[rel].read_bytes()), rel
    g = zarr.open_group(str(tmp_path / "fast" / "data.zarr"), mode="r")
    m = g["attention/M"]
    np.testing.assert_array_equal(m["maps"][3, 0, 0], data + 3)
    np.testing.assert_array_equal(m["step"][:], np.arange(6))
    np.testing.assert_array_equal(m["token"][:], np.arange(5))
    np.testing.assert_array_equal(m["timestep"][:], 800.0 - np.arange(6))
    assert m["token_text"][0].tolist() == toks_b[0]
    assert m["phase"][:].tolist() == ["sample", "guidance", "sample_uncond", "noise_search"]  # attnlens.vocab.PHASES
    assert m["maps"].metadata.dimension_names == ("step", "phase", "iteration", "sample", "head", "token", "y", "x")


def test_manifest_files_get_the_umask_mode_and_image_names_stay_inside_the_run(tmp_path):
    import json
    import os
    import stat

    import attnlens
    from attnlens.store.layout import default_file_mode

    w = RunWriter(tmp_path / "run", {"prompt": "p"})
    w.finish()
    mode = stat.S_IMODE(os.stat(tmp_path / "run" / "manifest.json").st_mode)
    assert mode == default_file_mode() and mode & 0o044 == 0o044 & default_file_mode()
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    outside = tmp_path / "secret.png"
    from PIL import Image

    Image.new("RGB", (2, 2)).save(outside)
    for name in (str(outside), "../secret.png"):
        m["images"] = {"0": name}
        (tmp_path / "run" / "manifest.json").write_text(json.dumps(m))
        assert attnlens.open_run(tmp_path / "run").image(0) is None


@pytest.mark.parametrize("text", ["[1, 2]", '"a string"', "null"])
def test_a_manifest_of_the_wrong_shape_is_a_store_error(tmp_path, text):
    import attnlens
    from attnlens.errors import StoreError

    RunWriter(tmp_path / "run", {"prompt": "p"}).finish()
    (tmp_path / "run" / "manifest.json").write_text(text)
    with pytest.raises(StoreError, match="not a JSON object"):
        attnlens.open_run(tmp_path / "run")
    assert attnlens.store.listing(tmp_path / "run")["status"] == "corrupted"


def test_a_run_shows_itself_in_a_notebook(tmp_path):
    import attnlens
    from PIL import Image

    w = RunWriter(tmp_path / "run", {"prompt": "a red <apple>", "seed": 3, "method": {"name": "syngen"}})
    w.write_map("down_blocks.0.attentions.0.transformer_blocks.0.attn2", 0, "sample", 0, 1, [["a", "b"]], 900.0,
                np.zeros((1, 1, 2, 4, 4), np.float16))
    w.write_image(Image.new("RGB", (8, 8), "red"), 0, 1)
    w.finish()
    page = attnlens.open_run(tmp_path / "run")._repr_html_()
    assert "a red &lt;apple&gt;" in page and "syngen" in page and ">3<" in page  # escaped prompt, method, seed
    assert "data:image/png;base64," in page and "4×4" in page

"""Direct chunk writes (attnlens.store.ChunkFiles) produce exactly the bytes zarr writes, and zarr reads them."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from attnlens.store import ChunkFiles, RunWriter, _compressor


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
    g = zarr.open_group(str(tmp_path / "run"), mode="r")
    np.testing.assert_array_equal(g["attention/layer/timestep"][:], [900.0, 899.0, 898.0])
    loss = g["scalars/loss"][:]
    assert loss.shape == (5, 2, 1) and loss[2, 0, 0] == 2.0 and loss[4, 1, 0] == 7.0 and np.isnan(loss[3, 0, 0])

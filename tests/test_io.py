import pytest
import torch
from safetensors.torch import load_file

from pndecomp.io import StreamingTensorWriter, atomic_path, load_metadata


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_streamed_file_is_ordinary_safetensors(tmp_path, dtype):
    data = torch.randn(10, 3, 5)
    path = tmp_path / "x.safetensors"
    with StreamingTensorWriter(path, "hidden", data.shape, dtype, {"layer": 7}) as writer:
        for start in range(0, 10, 4):
            writer.write(data[start:start + 4])
    assert torch.equal(load_file(str(path))["hidden"], data.to(dtype))
    assert load_metadata(path) == {"layer": 7}


def test_incomplete_stream_leaves_nothing(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(RuntimeError, match="3 of 10 rows"):
        with StreamingTensorWriter(path, "hidden", (10, 2), torch.float32) as writer:
            writer.write(torch.zeros(3, 2))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="does not match"):
        with StreamingTensorWriter(path, "hidden", (10, 2), torch.float32) as writer:
            writer.write(torch.zeros(3, 4))
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            1 / 0
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]

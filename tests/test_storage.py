import pytest
import torch
from safetensors.torch import load_file

from pndecomp.storage import StreamingTensorWriter, atomic_path, load_metadata


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


def test_saved_tensors_load_back_and_are_byte_identical_across_processes(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys, torch; from pndecomp.storage import save_tensors\n"
        "g = torch.Generator().manual_seed(0)\n"
        "save_tensors({'w': torch.randn(3, 4, generator=g), 'b': torch.arange(5, dtype=torch.int64),\n"
        "              'h': torch.randn(2, 2, generator=g).to(torch.bfloat16)}, sys.argv[1],\n"
        "             {'seed': 0, 'layer': 7, 'model': {'id': 'x'}, 'experiment': 'e', 'zeta': [1, 2]})\n"
    )
    paths = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for path, hash_seed in zip(paths, ("1", "2")):
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, env={"PYTHONHASHSEED": hash_seed})
    assert paths[0].read_bytes() == paths[1].read_bytes()
    loaded = load_file(str(paths[0]))
    assert loaded["b"].tolist() == [0, 1, 2, 3, 4] and loaded["h"].dtype == torch.bfloat16
    assert load_metadata(paths[0])["layer"] == 7
    assert oct(paths[0].stat().st_mode & 0o777) != oct(0o600)

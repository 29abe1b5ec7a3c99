import os

import pytest
import torch
from safetensors.torch import load_file

from pndecomp import embedded_corpus
from pndecomp.storage import (
    StreamingTensorsWriter,
    StreamingTensorWriter,
    WriteBehind,
    atomic_path,
    load_metadata,
    save_tensors,
)


def usual_mode(base: int) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return base & ~umask


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


def test_several_streamed_tensors_equal_save_tensors_byte_for_byte(tmp_path):
    """Rows of four tensors (two dtypes, different widths) written batch by batch, in an order other than
    the file's, make exactly the bytes save_tensors writes for the whole tensors."""
    g = torch.Generator().manual_seed(0)
    tensors = {"r": torch.randn(7, 3, generator=g), "h": torch.randn(7, 3, generator=g),
               "hhat": torch.randn(7, 2, 2, generator=g).to(torch.bfloat16), "h_mean": torch.randn(7, 5, generator=g)}
    metadata = {"layer": 2, "position": "T (last)", "model": {"id": "x"}}
    save_tensors(tensors, tmp_path / "whole.safetensors", metadata)
    spec = {name: (tuple(tensor.shape), tensor.dtype) for name, tensor in tensors.items()}
    with StreamingTensorsWriter(tmp_path / "streamed.safetensors", spec, metadata) as writer:
        for start in range(0, 7, 3):
            writer.write({name: tensors[name][start:start + 3] for name in ("r", "hhat", "h", "h_mean")})
    assert (tmp_path / "streamed.safetensors").read_bytes() == (tmp_path / "whole.safetensors").read_bytes()
    loaded = load_file(str(tmp_path / "streamed.safetensors"))
    assert all(torch.equal(loaded[name], tensor) for name, tensor in tensors.items())


def test_several_streamed_tensors_leave_nothing_on_an_error_or_a_missing_row(tmp_path):
    path = tmp_path / "x.safetensors"
    spec = {"h": ((4, 2), torch.float32), "r": ((4, 2), torch.float32)}
    with pytest.raises(ZeroDivisionError):
        with StreamingTensorsWriter(path, spec) as writer:
            writer.write({"h": torch.zeros(2, 2), "r": torch.zeros(2, 2)})
            raise ZeroDivisionError  # a failure mid-way, e.g. in the LM
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="incomplete tensors: r 2 of 4 rows written"):
        with StreamingTensorsWriter(path, spec) as writer:
            writer.write({"h": torch.zeros(4, 2), "r": torch.zeros(2, 2)})
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="more than 4 rows"):
        with StreamingTensorsWriter(path, spec) as writer:
            writer.write({"h": torch.zeros(5, 2)})
    with pytest.raises(KeyError, match="no tensor 'x'"):
        with StreamingTensorsWriter(path, spec) as writer:
            writer.write({"x": torch.zeros(1, 2)})
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(ZeroDivisionError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise ZeroDivisionError
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def write_model_dir(directory, weights: str) -> None:
    (directory / "config.json").write_text("{}")
    (directory / "sub").mkdir()
    (directory / "sub" / "weights.bin").write_text(weights)


def test_atomic_directory_appears_complete_and_replaces_the_old_one(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target, directory=True) as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path and list(tmp.iterdir()) == []
        write_model_dir(tmp, "first")
        assert not target.exists()  # nothing under the final name until the block ends
    assert (target / "sub" / "weights.bin").read_text() == "first"
    assert target.stat().st_mode & 0o777 == usual_mode(0o777)
    (target / "stale.txt").write_text("from the old directory")
    with atomic_path(target, directory=True) as tmp:
        write_model_dir(tmp, "second")
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "sub"]
    assert (target / "sub" / "weights.bin").read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary or old directory left


@pytest.mark.parametrize("existing", [False, True])
def test_atomic_directory_failure_leaves_no_temp_and_the_target_as_it_was(tmp_path, existing):
    target = tmp_path / "model"
    if existing:
        target.mkdir()
        (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"), atomic_path(target, directory=True) as tmp:
        write_model_dir(tmp, "half")
        raise RuntimeError("interrupted")
    assert [p.name for p in tmp_path.iterdir()] == (["model"] if existing else [])
    if existing:
        assert [p.name for p in target.iterdir()] == ["old.txt"]


def test_embedded_corpus_files_get_the_usual_mode(tmp_path):
    docs = [embedded_corpus._EmbeddedDoc("docstrings", "stdlib/x.py", "stdlib==3", "text " * 50, "g")]
    embedded_corpus._write_jsonl(tmp_path / "documents.jsonl", docs)
    embedded_corpus._write_manifest(tmp_path / "manifest.tsv", docs)
    for name in ("documents.jsonl", "manifest.tsv"):
        assert (tmp_path / name).stat().st_mode & 0o777 == usual_mode(0o666), name  # 0644 under umask 022
    assert sorted(p.name for p in tmp_path.iterdir()) == ["documents.jsonl", "manifest.tsv"]
    assert (tmp_path / "manifest.tsv").read_text().startswith("\t".join(embedded_corpus.MANIFEST_COLUMNS) + "\n")


def test_streamed_file_gets_the_usual_mode(tmp_path):
    path = tmp_path / "x.safetensors"
    with StreamingTensorWriter(path, "hidden", (2, 3), torch.float32) as writer:
        writer.write(torch.zeros(2, 3))
    assert path.stat().st_mode & 0o777 == usual_mode(0o666)


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


def test_write_behind_runs_every_write_in_order_and_reports_a_failed_one():
    import threading

    done, threads = [], set()

    def write(item):
        threads.add(threading.current_thread().name)
        done.append(item)

    with WriteBehind(depth=2) as behind:
        for item in range(7):
            behind.submit(write, item)
    assert done == list(range(7))
    assert threads and all(name.startswith("pndecomp-write") for name in threads)

    def fail(item):
        raise OSError(f"disk full at {item}")

    with pytest.raises(OSError, match="disk full at 0"):
        with WriteBehind(depth=5) as behind:
            behind.submit(fail, 0)
    # An error in the block wins over the pending writes' (which still run to the end).
    done.clear()
    with pytest.raises(ValueError, match="in the block"):
        with WriteBehind(depth=5) as behind:
            behind.submit(fail, 1)
            behind.submit(write, 2)
            raise ValueError("in the block")
    assert done == [2]

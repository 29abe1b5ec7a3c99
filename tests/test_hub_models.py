"""Hub models as users run them, offline: a hub id is read from the local hub cache only; one that is not
there, or only in part, fails at DAG time with the command that downloads it; a checkpoint that ships only
a pickled ``pytorch_model.bin`` loads, without running code from the file."""
from __future__ import annotations

import json
import logging
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from tiny import write_hub_snapshot

from pndecomp import config as pnconfig
from pndecomp import lm, model_files


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty hub cache (what HF_HUB_CACHE points to)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def _logits(model, n_tokens: int = 12) -> torch.Tensor:
    return model(input_ids=torch.arange(n_tokens)[None]).logits


def test_hub_id_not_downloaded_fails_naming_the_download_command(hub_cache):
    config = {"model": {"id": "EleutherAI/pythia-70m", "revision": "step143000"}}
    with pytest.raises(model_files.ModelNotDownloaded) as raised:
        pnconfig.model_shape(config)
    message = str(raised.value)
    assert message.startswith("model.id: 'EleutherAI/pythia-70m' (revision 'step143000') is not in the local "
                              f"hub cache. The workflow reads hub models only from the local hub cache ({hub_cache}")
    command = message.splitlines()[1].split()
    assert command[1:] == ["download", "EleutherAI/pythia-70m", "--revision", "step143000"], message
    # The command is the installed client's, and its download subcommand takes these arguments.
    help_text = subprocess.run([command[0], "download", "--help"], capture_output=True, text=True, timeout=60,
                               check=True).stdout
    assert "REPO_ID" in help_text and "--revision" in help_text, help_text
    # A model study reads every model's block count for the relative depths: the same error.
    with pytest.raises(model_files.ModelNotDownloaded, match="pythia-70m"):
        pnconfig.relative_depths({**config, "experiment": "study/pythia", "layers": [0.0, 1.0]})


def test_hub_id_without_revision_names_the_default_branch(hub_cache):
    with pytest.raises(model_files.ModelNotDownloaded, match=r"\(its default branch\)") as raised:
        pnconfig.model_shape({"model": {"id": "EleutherAI/pythia-70m", "revision": None}})
    assert str(raised.value).splitlines()[1].endswith("download EleutherAI/pythia-70m")


def test_partly_downloaded_hub_model_fails_naming_what_is_missing(hub_cache, tiny_model_dir):
    write_hub_snapshot(hub_cache, "tiny/neox", "main", {"config.json": tiny_model_dir / "config.json"})
    with pytest.raises(model_files.ModelNotDownloaded, match=r"incomplete in the local hub cache.*has no weights"
                                                    r"(.|\n)*download tiny/neox"):
        pnconfig.model_shape({"model": {"id": "tiny/neox", "revision": "main"}})
    # A sharded checkpoint whose index names a shard that is not there.
    index = {"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
                                            "b": "model-00002-of-00002.safetensors"}}
    write_hub_snapshot(hub_cache, "tiny/sharded", "main", {
        "config.json": tiny_model_dir / "config.json", "model.safetensors.index.json": json.dumps(index),
        "model-00001-of-00002.safetensors": tiny_model_dir / "model.safetensors"})
    missing = r"not its shard\(s\) \['model-00002-of-00002.safetensors'\]"
    with pytest.raises(model_files.ModelNotDownloaded, match=missing):
        pnconfig.model_shape({"model": {"id": "tiny/sharded", "revision": "main"}})


def test_downloaded_hub_model_loads_from_the_cache(hub_cache, tiny_model_dir):
    write_hub_snapshot(hub_cache, "tiny/neox", "step20", {path.name: path for path in tiny_model_dir.iterdir()})
    source = model_files.resolve_source({"id": "tiny/neox", "revision": "step20"})
    assert pnconfig.model_shape({"model": {"id": "tiny/neox", "revision": "step20"}}) == model_files.read_model_shape(
        model_files.ModelSource(str(tiny_model_dir)))
    model = lm.load_model(source)
    assert torch.equal(_logits(model), _logits(lm.load_model(model_files.ModelSource(str(tiny_model_dir)))))
    assert lm.load_tokenizer(source)("def x").input_ids == lm.load_tokenizer(
        model_files.ModelSource(str(tiny_model_dir)))("def x").input_ids
    # Another revision of the same repo is another snapshot, not downloaded yet.
    with pytest.raises(model_files.ModelNotDownloaded, match="revision 'step10'"):
        lm.load_model(model_files.resolve_source({"id": "tiny/neox", "revision": "step10"}))


def test_pickled_checkpoint_loads_the_same_weights(tmp_path, tiny_model_dir, caplog):
    """A directory with only pytorch_model.bin (older hub revisions) loads, and the log says from which file."""
    pickled = tmp_path / "pickled-model"
    shutil.copytree(tiny_model_dir, pickled)
    (pickled / "model.safetensors").unlink()
    model = lm.load_model(model_files.ModelSource(str(tiny_model_dir)))
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    assert model_files.weights_file(pickled) == pickled / "pytorch_model.bin"
    with caplog.at_level(logging.INFO, logger="pndecomp.lm"):
        loaded = lm.load_model(model_files.ModelSource(str(pickled)))
    assert f"from {pickled / 'pytorch_model.bin'}" in caplog.text
    assert torch.equal(_logits(loaded), _logits(model))
    # With both, the safetensors file is read.
    shutil.copyfile(tiny_model_dir / "model.safetensors", pickled / "model.safetensors")
    assert model_files.weights_file(pickled) == pickled / "model.safetensors"


def test_pickled_checkpoint_runs_no_code(tmp_path, tiny_model_dir):
    """A pytorch_model.bin is read with torch.load(weights_only=True): an object that would run code on
    unpickling is refused, and its code never runs."""
    marker = tmp_path / "code-ran"

    class Payload:
        def __reduce__(self):
            return Path.touch, (marker,)

    hostile = tmp_path / "hostile-model"
    hostile.mkdir()
    shutil.copyfile(tiny_model_dir / "config.json", hostile / "config.json")
    with open(hostile / "pytorch_model.bin", "wb") as handle:
        pickle.dump({"gpt_neox.embed_in.weight": Payload()}, handle, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="[Ww]eights only load failed"):
        lm.load_model(model_files.ModelSource(str(hostile)))
    assert not marker.exists()


def test_model_directory_without_weights_fails_before_any_job(tmp_path, tiny_model_dir):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    shutil.copyfile(tiny_model_dir / "config.json", empty / "config.json")
    expected = r"has no weights: expected one of model\.safetensors, .*pytorch_model\.bin"
    with pytest.raises(FileNotFoundError, match=expected):
        pnconfig.model_shape({"model": {"id": str(empty)}})
    with pytest.raises(FileNotFoundError, match=expected):
        lm.load_model(model_files.ModelSource(str(empty)))


def test_resource_table_without_the_model_names_the_download_command_or_shape(hub_cache, capsys):
    from pndecomp.resources.__main__ import main

    repo = Path(__file__).resolve().parents[1]
    with pytest.raises(SystemExit):
        main([str(repo / "configs" / "paper.yaml")])
    error = capsys.readouterr().err
    assert "download EleutherAI/pythia-410m-deduped --revision main" in error and "--shape" in error, error

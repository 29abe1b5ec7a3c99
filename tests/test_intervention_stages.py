"""The intervention stages' own logic: which windows they take, the rows they read, and the
config checks that stop a bad interventions section before any job runs. The stages themselves run in
tests/test_workflow.py on the tiny model."""
import numpy as np
import pytest
import torch

from pndecomp import config as pnconfig
from pndecomp import storage
from pndecomp.stages import interventions as intervention_stages


def test_spread_windows_takes_every_document_once_before_any_twice():
    documents = np.array(["a"] * 5 + ["b"] * 3 + ["c"] + ["d"] * 2)
    for n in range(1, 5):
        rows = intervention_stages.spread_windows(documents, n, seed=0)
        assert len(set(documents[rows])) == n and list(rows) == sorted(rows)
    rows = intervention_stages.spread_windows(documents, 7, seed=0)
    counts = {doc: int((documents[rows] == doc).sum()) for doc in "abcd"}
    assert counts["c"] == 1 and counts["d"] == 2 and counts["a"] + counts["b"] == 4 and min(counts.values()) >= 1
    assert max(counts.values()) - min(counts["a"], counts["b"]) <= 1  # a and b share the rest: 2 and 2
    np.testing.assert_array_equal(intervention_stages.spread_windows(documents, 7, seed=0), rows)  # seeded
    spread = intervention_stages.spread_windows
    assert any(not np.array_equal(spread(documents, 3, seed=s), spread(documents, 3, 0)) for s in range(1, 10))
    with pytest.raises(ValueError, match="cannot pick 12 of 11"):
        intervention_stages.spread_windows(documents, 12, seed=0)


def test_steered_windows_take_up_to_k_per_domain():
    labels = np.array(["x", "x", "x", "y", "y", "z"])
    documents = np.array(["1", "1", "2", "3", "4", "5"])
    rows = intervention_stages.steered_windows(labels, documents, np.arange(6), 2, seed=0)
    assert list(labels[rows]) == ["x", "x", "y", "y", "z"]
    assert set(documents[rows[:2]]) == {"1", "2"}  # two documents before a second window of one


def test_stored_rows_are_the_rows_of_the_file(tmp_path):
    hidden = torch.randn(11, 4, 3).to(torch.float16)
    path = tmp_path / "layer.safetensors"
    storage.save_tensors({"hidden": hidden}, path)
    rows = np.array([0, 3, 4, 9, 10])
    assert torch.equal(intervention_stages.stored_rows(str(path), rows, batch_size=4), hidden[rows])


def _config(**interventions_section):
    section = {"from_position": 33, "patching_windows": 16, "steering_layers": None, **interventions_section}
    return {"layers": [0, 7, 15, "final"], "windows": {"length": 128, "predictor_eval": 128},
            "probes": {"tasks": ["domain"]}, "interventions": section}


def test_layers_of_the_interventions():
    assert pnconfig.patching_layers(_config()) == ["0", "7", "15"]
    assert pnconfig.steering_layers(_config()) == ["7"]  # the middle block layer
    assert pnconfig.steering_layers(_config(steering_layers=[15, 0])) == ["15", "0"]
    assert pnconfig.steering_readout_layers(_config(), "7") == ["7", "15"]
    assert pnconfig.steering_readout_layers(_config(), "15") == ["15"]
    pnconfig.check_interventions(_config())


@pytest.mark.parametrize(("change", "message"), [
    ({"interventions": {"from_position": 128}}, "from_position is 128: with windows.length 128 it must be at most 127"),
    ({"interventions": {"patching_windows": 200}}, "patching_windows is 200, more than windows.predictor_eval"),
    ({"interventions": {"steering_layers": ["final"]}}, "'final' is not a configured block layer"),
    ({"interventions": {"steering_layers": [3]}}, "'3' is not a configured block layer"),
    ({"interventions": {"steering_layers": [7]}, "probes": {"tasks": ["next_token_type_8"]}},
     r"steering_layers is \[7\] but probes.tasks has no 'domain'"),
])
def test_bad_interventions_sections_are_refused(change, message):
    config = _config(**change.get("interventions", {}))
    config["probes"] = change.get("probes", config["probes"])
    with pytest.raises(pnconfig.ConfigError, match=message):
        pnconfig.check_interventions(config)


def test_without_the_domain_task_the_default_steers_nowhere():
    config = {**_config(), "probes": {"tasks": ["next_token_type_8"]}}
    assert pnconfig.steering_layers(config) == [] and pnconfig.patching_layers(config) == ["0", "7", "15"]
    pnconfig.check_interventions(config)

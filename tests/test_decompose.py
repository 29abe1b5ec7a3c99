"""pndecomp.decompose: any text's h, ĥ and r, checked against independent computations (the LM's own
output_hidden_states and logits, the predictor run on each prefix alone, numpy's norms), against the pipeline's
stored residuals and surprisal on the tiny workflow, as a command, as a page in a real browser (headless
Chromium) and as the notebook docs/notebooks/decompose.ipynb."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from safetensors import safe_open
from tiny import TINY_RUN_TEXTS, write_config

from pndecomp import decompose, extract, predictor, storage
from pndecomp.config_files import write_resolved
from pndecomp.config_schema import validate
from pndecomp.decompose import FRAME_COLUMNS, Decomposer
from pndecomp.overrides import load_schema
from pndecomp.predictor_kinds import AttentionConfig
from pndecomp.results import ResultsError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
# Two texts of one length (one batch) and one of another; the tiny corpus's words.
TEXTS = ["the cat sat on a mat and then it slept", "the cat sat on a mat and then it fell",
         "def x ( ) :\n  return x + 1"]
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]


# ---------------------------------------------------------------------------------------------- a run's files

@pytest.fixture(scope="module")
def fake_run(tmp_path_factory, tiny_model_dir, tiny_corpus) -> Path:
    """What a run leaves that the decomposer reads: the resolved config (tiny model, layers 0, 2, 3, storage
    dtype chosen as float16) and attn1's weights at layers 0 and 2, random, normalised with an outlier limit as
    the default trains them; layer 3's are missing (an unfinished run)."""
    run = tmp_path_factory.mktemp("results") / "tiny"
    config = yaml.safe_load(write_config(run.parent / "config.yaml", tiny_model_dir, tiny_corpus).read_text())
    validate(config, load_schema(SCHEMA))
    write_resolved(config, run / "config.yaml")
    storage.write_json({"dtype": "float16"}, run / "activations" / "storage_dtype.json")
    for seed, layer in enumerate(["0", "2"]):
        torch.manual_seed(seed)
        inner = predictor.CausalPredictor(AttentionConfig(d_model=32, n_heads=4, d_head=8))
        model = predictor.Normalized(inner, torch.randn(32) * 0.1, torch.rand(32) + 0.5, "robust_rms", 6.0)
        path = run / "predictors" / "attn1" / f"layer-{layer}" / "predictor.safetensors"
        path.parent.mkdir(parents=True)
        predictor.save_predictor(model, path)
    return run


@pytest.fixture(scope="module")
def decomposer(fake_run) -> Decomposer:
    return Decomposer.from_run(fake_run, layers=[0, 2], device="cpu")


@pytest.fixture(scope="module")
def decomposition(decomposer):
    return decomposer(TEXTS)


# ---------------------------------------------------------------------------------------------- the numbers

def test_h_hhat_r_and_surprisal_against_independent_computations(decomposer, decomposition):
    """h: HF's output_hidden_states[ℓ + 1] rounded to float16; ĥ_t: the predictor on h_1..h_{t−1} alone;
    r = h − ĥ exactly; surprisal: a float64 log-softmax of the LM's own logits; NaN at position 1."""
    tokenizer = decomposer.tokenizer
    for index, text in enumerate(TEXTS):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert decomposition.token_ids[index].tolist() == ids
        assert decomposition.tokens[index] == [tokenizer.decode([token]) for token in ids]
        output = decomposer.model(torch.tensor([ids]), output_hidden_states=True)
        log_p = torch.log_softmax(output.logits[0].double(), dim=-1)
        expected = [-log_p[t - 1, ids[t]].item() for t in range(1, len(ids))]
        assert np.isnan(decomposition.surprisal[index][0])
        np.testing.assert_allclose(decomposition.surprisal[index][1:], expected, rtol=1e-5, atol=1e-5)
        for row, layer in enumerate(decomposition.layers):
            h = output.hidden_states[int(layer) + 1][0].to(torch.float16).float()
            # float16's precision: a batch of two may round a last bit otherwise than one text alone
            np.testing.assert_allclose(decomposition.h[index][row], h.numpy(), rtol=2**-10, atol=1e-6)
            h = torch.from_numpy(decomposition.h[index][row])
            model = decomposer.predictors[layer]
            hhat = decomposition.hhat[index][row]
            assert np.isnan(hhat[0]).all() and np.isnan(decomposition.r[index][row][0]).all()
            for t in range(1, len(ids)):
                alone = model(h[None, :t])[0, -1]  # the prediction of h_{t+1} from h_1..h_t (0-based row t)
                np.testing.assert_allclose(hhat[t], alone.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(decomposition.h[index] - decomposition.hhat[index], decomposition.r[index])


def test_frame_has_one_row_per_text_layer_and_position_with_numpy_s_numbers(decomposition):
    frame = decomposition.to_frame()
    assert tuple(frame.columns) == FRAME_COLUMNS
    lengths = [len(ids) for ids in decomposition.token_ids]
    assert len(frame) == 2 * sum(lengths)
    assert list(frame["layer"].cat.categories) == ["0", "2"]
    for index, length in enumerate(lengths):
        for row, layer in enumerate(decomposition.layers):
            rows = frame[(frame["text"] == index) & (frame["layer"] == layer)]
            assert rows["position"].tolist() == list(range(1, length + 1))
            assert rows["token"].tolist() == decomposition.tokens[index]
            assert rows["token_id"].tolist() == decomposition.token_ids[index].tolist()
            h, hhat, r = (torch.from_numpy(array[index][row]).double()
                          for array in (decomposition.h, decomposition.hhat, decomposition.r))
            np.testing.assert_allclose(rows["h_norm"], torch.linalg.vector_norm(h, dim=-1), rtol=1e-12)
            np.testing.assert_allclose(rows["hhat_norm"], torch.linalg.vector_norm(hhat, dim=-1), rtol=1e-12)
            np.testing.assert_allclose(rows["r_norm"], torch.linalg.vector_norm(r, dim=-1), rtol=1e-12)
            np.testing.assert_allclose(rows["r_over_h"], rows["r_norm"] / rows["h_norm"], rtol=1e-12)
            cos = torch.nn.functional.cosine_similarity(h[1:], hhat[1:], dim=-1)
            np.testing.assert_allclose(rows["cos_h_hhat"].iloc[1:], cos, rtol=1e-10)
            np.testing.assert_array_equal(rows["surprisal"], decomposition.surprisal[index].astype(np.float64))
            assert rows.iloc[0][["hhat_norm", "r_norm", "r_over_h", "cos_h_hhat", "surprisal"]].isna().all()


def test_batches_and_input_forms_change_no_number(decomposer, decomposition):
    """One text alone, as a string, its ids (a list, a 2-D array, a tensor) or among others: the same numbers."""
    ids = decomposition.token_ids[2]
    for given in (TEXTS[2], [TEXTS[2]], ids.tolist(), ids[None, :], torch.from_numpy(ids)):
        alone = decomposer(given)
        assert len(alone) == 1 and alone.token_ids[0].tolist() == ids.tolist()
        for name in ("h", "hhat", "r", "surprisal"):
            np.testing.assert_allclose(getattr(alone, name)[0], getattr(decomposition, name)[2], rtol=1e-5, atol=1e-5)
    one_at_a_time = decomposer(TEXTS[:2], batch_size=1)
    for name in ("h", "r", "surprisal"):
        for index in range(2):
            np.testing.assert_allclose(getattr(one_at_a_time, name)[index], getattr(decomposition, name)[index],
                                       rtol=1e-5, atol=1e-5)


def test_bos_is_prepended_as_the_run_s_windows_have_it(decomposer):
    with_bos = Decomposer(decomposer.model, decomposer.tokenizer, decomposer.predictors, prepend_bos=True)
    ids = with_bos(TEXTS[0]).token_ids[0]
    assert ids[0] == decomposer.tokenizer.bos_token_id
    assert ids[1:].tolist() == decomposer.tokenizer(TEXTS[0], add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("given, error, message", [
    ("", ValueError, "text 0 is empty"),
    (["the cat", "  \n"], ValueError, "text 1 is empty"),
    ([], ValueError, "nothing to decompose"),
    ([5], ValueError, "input 0 has 1 token"),
    ([[1, 2], [3, 10**6]], ValueError, r"outside the vocabulary \(0\.\.299\)"),
    (list(range(2, 260)), ValueError, "258 tokens, more than the LM's context of 256 tokens"),
    ([1.5, 2.5], TypeError, "give texts"),
])
def test_bad_input_is_refused_naming_what_is_valid(decomposer, given, error, message):
    with pytest.raises(error, match=message):
        decomposer(given)


def test_bad_run_layer_or_predictor_is_refused_before_the_lm_loads(fake_run, tmp_path):
    with pytest.raises(ResultsError, match="does not exist"):
        Decomposer.from_run(tmp_path / "nowhere")
    with pytest.raises(ValueError, match=r"layers \['5'\].*layers \['0', '2', '3'\] only"):
        Decomposer.from_run(fake_run, layers=[5])
    with pytest.raises(ValueError, match=r"predictor 'attn2' is not one of the run's predictors: \['attn1'\]"):
        Decomposer.from_run(fake_run, predictor="attn2")
    with pytest.raises(ResultsError, match=r"missing .*layer-3/predictor.safetensors .*unfinished.*snakemake"):
        Decomposer.from_run(fake_run)  # every layer, and layer 3 has no predictor yet


# ------------------------------------------------------------------------------------- the page and the command

def test_command_writes_the_page_and_the_table(fake_run, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text(TEXTS[2], encoding="utf-8")
    html, tsv = tmp_path / "page.html", tmp_path / "table.tsv"
    decompose.main([str(fake_run), "--file", str(text), "--layers", "2", "--device", "cpu", "--html", str(html),
                    "--tsv", str(tsv)])
    table = pd.read_csv(tsv, sep="\t", dtype={"layer": str}, keep_default_na=False, na_values=[""])
    assert list(table.columns) == list(FRAME_COLUMNS) and set(table["layer"]) == {"2"}
    tokens = Decomposer.from_run(fake_run, layers=[2], device="cpu")(TEXTS[2]).tokens[0]
    assert table["token"].tolist() == tokens and table["position"].tolist() == list(range(1, len(tokens) + 1))
    page = html.read_text(encoding="utf-8")
    assert 'id="figure-0"' in page and "<script src=" not in page and len(page) > 1_000_000  # plotly.js embedded
    with pytest.raises(SystemExit):
        decompose.main([str(fake_run), "--text", "the cat", "--predictor", "attn2", "--html", str(html)])
    assert "predictor 'attn2' is not one of the run's predictors: ['attn1']" in capsys.readouterr().err


def rendered(page: Path, profile: Path, layer: str | None = None) -> dict:
    """The page in headless Debian Chromium driven by playwright: the SVG elements of each plotly figure, the
    console's errors, the hover label of the first figure's middle cell, and the background of each token of
    the first text once ``layer`` is chosen in its menu."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium here: `apt-get install chromium` (.ci/run installs it where missing)")
    from playwright.sync_api import sync_playwright  # a dev requirement: requirements-dev.lock, `make install-dev`

    found = {"errors": []}
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(str(profile), executable_path=chromium, headless=True,
                                                                args=CHROMIUM_FLAGS)
        try:
            tab = context.new_page()
            tab.on("console", lambda message: message.type == "error" and found["errors"].append(message.text))
            tab.on("pageerror", lambda error: found["errors"].append(str(error)))
            tab.goto(page.as_uri())
            tab.wait_for_selector("#figure-0 svg.main-svg", timeout=60_000)
            found["svgs"] = tab.eval_on_selector_all(
                ".plotly-graph-div", "divs => divs.map(div => div.querySelectorAll('svg.main-svg').length)")
            box = tab.locator("#figure-0 .nsewdrag").first.bounding_box()
            tab.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
            tab.wait_for_selector("#figure-0 .hoverlayer .hovertext", timeout=10_000)
            found["hover"] = tab.locator("#figure-0 .hoverlayer .hovertext").first.text_content()
            if layer is not None:
                tab.select_option("#layer-0", layer)
            found["shades"] = tab.eval_on_selector_all("#text-0 .tok",
                                                       "spans => spans.map(span => span.style.backgroundColor)")
            found["unpredicted"] = tab.eval_on_selector_all("#text-0 .tok.none", "spans => spans.length")
            found["texts"] = tab.eval_on_selector_all(".text", "divs => divs.map(div => div.textContent)")
        finally:
            context.close()
    return found


def test_page_renders_in_a_real_browser(decomposer, tmp_path):
    """plotly draws every figure (its SVG is there) with no console error, hover names the token and its numbers,
    and a text that looks like markup stays text."""
    texts = [TEXTS[0], "x </script><b>bold</b> 1"]
    page = decomposer(texts).to_html(tmp_path / "page.html")
    shown = rendered(page, tmp_path / "profile")
    assert shown["errors"] == [] and len(shown["svgs"]) == 2 and min(shown["svgs"]) >= 1, shown
    for label in ("token", "position", "‖r‖", "‖ĥ‖", "surprisal"):
        assert label in shown["hover"], shown["hover"]
    assert shown["texts"] == texts


def test_layer_menu_shades_each_token_by_its_ratio(decomposition, tmp_path):
    """A decomposition whose ĥ is a known fraction of h (‖r‖/‖h‖ = 1 − fraction): each token's shade at the chosen
    layer is its ratio (a span's alpha), position 1 has none, and choosing the other layer reshades the text."""
    h = decomposition.h[0]
    ratios = np.stack([np.linspace(0.05, 0.95, h.shape[1]), np.linspace(0.9, 0.1, h.shape[1])])
    hhat = h * (1 - ratios)[:, :, None]
    hhat[:, 0] = np.nan
    known = decompose.Decomposition(decomposition.tokens[:1], decomposition.token_ids[:1], decomposition.layers, [h],
                                    [hhat], [h - hhat], decomposition.surprisal[:1])
    page = known.to_html(tmp_path / "page.html", layer=0)
    for layer, row in (("0", 0), ("2", 1)):
        shown = rendered(page, tmp_path / f"profile-{layer}", layer=layer)
        assert shown["errors"] == [] and shown["unpredicted"] == 1 and shown["shades"][0] == ""
        alphas = [float(shade.removeprefix("rgba(").rstrip(")").split(",")[-1]) for shade in shown["shades"][1:]]
        np.testing.assert_allclose(alphas, ratios[row, 1:], atol=0.005)  # the browser keeps alpha in 8 bits


# ---------------------------------------------------------------------------------------------- on the tiny workflow

@pytest.mark.slow
def test_same_numbers_as_the_pipeline_on_its_eval_windows(tiny_run):
    """For the predictor_eval windows' token ids: .r is the stored residuals within float16's precision (the run's
    storage dtype), .h the stored hidden states and .surprisal the stored surprisal."""
    workdir, _ = tiny_run
    out = workdir / "results" / "tiny"
    tokens = extract.window_tokens(str(out / "windows" / "predictor_eval.parquet"))
    decomposition = Decomposer.from_run(out, device="cpu")(tokens)
    assert decomposition.layers == ["0", "2", "3"] and len(decomposition) == len(tokens) == 16

    def stored(path: Path, name: str) -> np.ndarray:
        with safe_open(str(path), framework="pt") as handle:
            return handle.get_tensor(name).float().numpy()

    surprisal = stored(out / "activations" / "predictor_eval" / "surprisal.safetensors", "surprisal")
    np.testing.assert_allclose(np.stack(decomposition.surprisal)[:, 1:], surprisal, rtol=1e-5, atol=1e-5)
    for row, layer in enumerate(decomposition.layers):
        hidden = stored(out / "activations" / "predictor_eval" / f"layer-{layer}.safetensors", "hidden")
        precision = np.finfo(np.float16).eps * np.abs(hidden)  # one float16 step: the run had other threads
        assert (np.abs(np.stack([h[row] for h in decomposition.h]) - hidden) <= precision).all(), layer
        residual = stored(out / "residuals" / "attn1" / "predictor_eval" / f"layer-{layer}.safetensors", "residual")
        ours = np.stack([r[row, 1:] for r in decomposition.r])
        precision = np.finfo(np.float16).eps * np.abs(residual) + np.finfo(np.float16).smallest_subnormal
        assert (np.abs(ours - residual) <= precision).all(), layer


@pytest.mark.slow
def test_inspect_pages_are_targets_of_all_and_one_text_reruns_its_page_alone(tiny_run, tmp_path):
    from snakemake_log import job_stats, snakemake
    from test_workflow import changed_copy

    workdir, _ = tiny_run
    for name in TINY_RUN_TEXTS:
        page = (workdir / "results" / "tiny" / "inspect" / f"{name}.html").read_text(encoding="utf-8")
        assert "attn1" in page and 'id="figure-0"' in page and "<script src=" not in page
    shown = rendered(workdir / "results" / "tiny" / "inspect" / "prose.html", tmp_path / "profile")
    assert shown["errors"] == [] and shown["svgs"] == [shown["svgs"][0]] and shown["svgs"][0] >= 1, shown
    jobs = job_stats(snakemake(changed_copy(workdir, "it slept", "it purred"), "-n"))
    assert jobs == {"inspect_text": 1, "resolved_config": 1, "all": 1}


@pytest.mark.slow
def test_command_on_the_tiny_run(tiny_run, tmp_path):
    workdir, _ = tiny_run
    html, tsv = tmp_path / "out.html", tmp_path / "out.tsv"
    result = subprocess.run([sys.executable, "-m", "pndecomp.decompose", str(workdir / "results" / "tiny"), "--text",
                             TEXTS[0], "--text", TEXTS[2], "--html", str(html), "--tsv", str(tsv)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    table = pd.read_csv(tsv, sep="\t", dtype={"layer": str})
    assert set(table["text"]) == {0, 1} and set(table["layer"]) == {"0", "2", "3"}
    assert html.stat().st_size > 1_000_000


@pytest.mark.slow
def test_notebook_runs_on_the_tiny_run(tiny_run, tmp_path, monkeypatch):
    import nbformat  # nbclient and ipykernel: dev requirements (requirements-dev.lock, `make install-dev`)
    from nbclient import NotebookClient

    workdir, _ = tiny_run
    monkeypatch.setenv("PNDECOMP_RUN", str(workdir / "results" / "tiny"))
    monkeypatch.setenv("PNDECOMP_PAGE", str(tmp_path / "page.html"))
    notebook = nbformat.read(REPO / "docs" / "notebooks" / "decompose.ipynb", as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells)  # stored without outputs
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(REPO / "docs" / "notebooks")}}).execute()
    assert (tmp_path / "page.html").stat().st_size > 1_000_000
    last = notebook.cells[-1].outputs[0]["data"]["text/plain"]
    assert "r2" in last and "layer" in last

"""Every notebook in notebooks/ (jupytext percent .py files) converted with jupytext and executed with nbclient on
the micro world (``MECHUNLEARN_NOTEBOOK_SIZE=micro``) in a temporary working directory: no cell may fail, and the
outputs each notebook exists for must be there (plotly figures, tables with their columns).

The kernel runs this interpreter (a kernel spec written into a temporary ``JUPYTER_PATH``, so whatever python3
spec the machine has does not matter), with ``MECHUNLEARN_CACHE`` set to the session's micro cache: the world
and its pretrained base / gold models are the ones the other tests use, never trained again.

One kernel serves every notebook (importing torch and TransformerLens costs ~15 s a kernel on a busy 2-core
machine): before each notebook a first cell runs ``%reset -f`` (the namespace emptied, so a notebook that forgot
an import or a variable fails as it would in a fresh kernel) and changes into the notebook's own temporary
directory. What is shared is only what Python caches across a namespace reset: imported modules and their state.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "mechunlearn-tests"
PLOTLY = "application/vnd.plotly.v1+json"

# what each notebook must show: at least this many plotly figures, and these strings in its outputs
EXPECTED = {
    "01_quickstart": (2, ["cloze/forget/unique", "forget_quality", "activation_comparison", "forget loss"]),
    "02_whp_explorer": (2, ["alpha", "familiarity_prob", "p_answer"]),
    "03_brittleness_study": (1, ["magnitude/gold", "cloze/forget/unique", "tokens.csv", "image/png", "ColoredTokens"]),
    "04_native_switch": (1, ["native (off)", "native-off-nearest", "random-nearest", "precision", "recall_unique"]),
    "05_attacks": (3, ["relearn", "p_value", "steps_to_half_gap", "suffix", "target_logprob_after"]),
}


@pytest.fixture(scope="module")
def kernel(tmp_path_factory, micro_cache, micro_base_dir, micro_gold_dir):
    """A started kernel (its manager) running this interpreter in the notebooks' environment, warmed up."""
    from nbformat.v4 import new_code_cell, new_notebook

    jupyter_path = tmp_path_factory.mktemp("jupyter")
    spec = jupyter_path / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mechunlearn tests", "language": "python"}))
    environment = {**os.environ, "JUPYTER_PATH": str(jupyter_path), "MECHUNLEARN_NOTEBOOK_SIZE": "micro",
                   "MECHUNLEARN_CACHE": str(micro_cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                   "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    warm_up = new_notebook(cells=[new_code_cell(
        "import sys, torch, transformer_lens, plotly.graph_objects, mechunlearn.api\n"
        "assert sys.executable == %r, sys.executable" % sys.executable)])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JUPYTER_PATH", str(jupyter_path))  # where the client looks the kernel spec up
        starter = nbclient.NotebookClient(warm_up, kernel_name=KERNEL, timeout=240)
        started = time.perf_counter()
        starter.execute(cleanup_kc=False, env=environment, cwd=str(jupyter_path))
        print(f"kernel started and warmed up in {time.perf_counter() - started:.1f} s")
    yield starter.km
    starter._cleanup_kernel()


def _outputs(notebook) -> tuple[int, str]:
    """How many plotly figures the executed notebook holds, and the text of all its outputs."""
    figures, texts = 0, []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            # a plotly figure: the plotly mimetype, or a result's _repr_html_ drawing one (Plotly.newPlot)
            figures += PLOTLY in data or "Plotly.newPlot" in str(data.get("text/html", ""))
            texts.append(" ".join(data))  # the mime types (an image/png figure)
            texts.extend(str(data.get(kind, "")) for kind in ("text/html", "text/plain", "text/markdown"))
            texts.append(str(output.get("text", "")))
    return figures, "\n".join(texts)


def test_every_notebook_is_tested():
    assert sorted(path.stem for path in NOTEBOOKS.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_runs_on_the_micro_world(name, kernel, tmp_path):
    from nbformat.v4 import new_code_cell

    notebook = jupytext.read(NOTEBOOKS / f"{name}.py")
    assert notebook.metadata["kernelspec"]["language"] == "python"
    if name == "01_quickstart":
        assert len(notebook.cells) < 30
    notebook.cells.insert(0, new_code_cell(f"%reset -f\nimport os\nos.chdir({str(tmp_path)!r})"))
    client = nbclient.NotebookClient(notebook, km=kernel, timeout=240, allow_errors=False)
    started = time.perf_counter()
    try:
        client.execute()
    finally:  # the executed notebook stays next to its temporary outputs, for a look when something failed
        import nbformat

        nbformat.write(notebook, tmp_path / f"{name}.ipynb")
    print(f"{name}: {len(notebook.cells)} cells in {time.perf_counter() - started:.1f} s")
    figures, text = _outputs(notebook)
    minimum, strings = EXPECTED[name]
    assert figures >= minimum, f"{name}: {figures} plotly figures, expected at least {minimum}"
    assert text.count("plotly.js v") == 1, "plotly.js should be in the notebook once (mu.notebook_mode())"
    missing = [string for string in strings if string not in text]
    assert not missing, f"{name}: outputs lack {missing}"

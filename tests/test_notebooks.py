"""The notebooks that need no `make demo` run as notebooks: executed in a real Jupyter kernel, committed without
outputs, and every figure displays inline (an image/png output), not only as a file."""

import os
from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"


@pytest.mark.parametrize("name,figures", [("your_own_model", ["smollm2_logit_lens", "organism_top1_expert",
                                                               "organism_logit_lens"])])
def test_notebook_runs_and_figures_display_inline(name, figures, tmp_path):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:  # committed without outputs
        assert cell.cell_type != "code" or (not cell.outputs and cell.execution_count is None), name
    env = {"ADT_PROBE_FIGURES": str(tmp_path)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type in ("display_data", "execute_result") and "image/png" in o.data]
    assert len(images) == len(figures), f"{len(images)} inline figures, {len(figures)} expected"
    for figure in figures:
        assert (tmp_path / f"{figure}.png").stat().st_size > 10_000 and (tmp_path / f"{figure}.pdf").exists()


def test_importing_the_library_leaves_the_matplotlib_backend_alone():
    """A notebook's inline backend (here: svg, chosen by the user) must survive ``import adt_probe``."""
    import subprocess
    import sys

    code = ("import matplotlib; import adt_probe, analyses.report; from adt_probe import plot; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MPLBACKEND": "svg"}, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == "svg"

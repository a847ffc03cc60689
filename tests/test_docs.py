"""`make docs`: library notebooks rendered with their outputs, and reports/index.html linking every report (light: no models)."""

import base64, tempfile
from urllib.parse import quote
import nbformat
from causalneg.pipeline import render_docs, render_html, write_index

# a 1x1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def test_index_links_every_file(tmp_path):
    files = [
        "benchmark.html",
        "tables.html",
        "main_table.md",
        "main_table.csv",
        "claims.md",
        "claims.json",
        "figures/main_table.png",
        "figures/odd name.png",
        "metrics/main.json",
        "metrics/zeroshot.json",
        "per_query/metrics.csv",
        "per_query/probe.csv",
        "notebooks/benchmark.ipynb",
        "docs/01_data.html",
        "docs/10_pipeline.html",
        "something/else.txt",
    ]
    for f in files:
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_bytes(PNG if f.endswith(".png") else b"| a | b |\n")
    page = write_index(tmp_path).read_text()
    for f in files:
        assert f'href="{quote(f)}"' in page, f
    for f in ("figures/main_table.png", "figures/odd name.png"):
        assert f'<img src="{quote(f)}"' in page, "figures are shown as thumbnails"
    assert "index.html" not in page and "file://" not in page and '="/' not in page, "relative links only"
    assert page.index("<h2>Pipeline reports</h2>") < page.index("<h2>Library notebooks</h2>")
    assert write_index(tmp_path).read_text() == page, "the index does not list itself"


def test_rendered_html_embeds_images_and_names_no_temp_path(tmp_path):
    tmp = tempfile.mkdtemp()
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("# A report"),
            nbformat.v4.new_code_cell(
                "show()",
                outputs=[
                    nbformat.v4.new_output(
                        "display_data", data={"image/png": base64.b64encode(PNG).decode(), "text/plain": "<Figure>"}
                    ),
                    nbformat.v4.new_output("stream", name="stdout", text=f"saved {tmp}/figure.png\n"),
                    nbformat.v4.new_output(
                        "stream",
                        name="stderr",
                        text=f"{tmp}/venv/lib/python3.11/site-packages/tqdm/auto.py:21: TqdmWarning: "
                        "IProgress not found. Please update jupyter and ipywidgets.\n  from .autonotebook import tqdm as notebook_tqdm\n",
                    ),
                    nbformat.v4.new_output(
                        "error", ename="OSError", evalue=f"{tmp}/missing.txt", traceback=[f"File {tmp}/x.py:1"]
                    ),
                ],
            ),
        ],
        metadata={"kernelspec": KERNEL},
    )
    src = tmp_path / "report.ipynb"
    nbformat.write(nb, str(src))
    render_html(src, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "/tmp/" not in html and tmp not in html and "TqdmWarning" not in html
    assert "saved $TMPDIR/figure.png" in html and "File $TMPDIR/x.py:1" in html


def test_render_docs_executes_library_notebooks_from_the_root(tmp_path):
    "A fake project with one library notebook: run like nbdev_test (IN_TEST, test flags skipped, hide cells left out)."
    (tmp_path / "nbs").mkdir()
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "settings.ini").write_text("[DEFAULT]\ntst_flags = slow\n")
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("#| default_exp x"),
            nbformat.v4.new_markdown_cell("# x\n\nSome prose."),
            nbformat.v4.new_code_cell(
                '#| export\nimport os, tempfile\nprint("IN_TEST", os.environ.get("IN_TEST"), "cwd", os.getcwd(), tempfile.mkdtemp())'
            ),
            nbformat.v4.new_code_cell('#| hide\nprint("hidden cell")'),
            nbformat.v4.new_code_cell('#| slow\nraise RuntimeError("must not run")'),
            nbformat.v4.new_code_cell(f"from IPython.display import Image, display\ndisplay(Image(data={PNG!r}))"),
        ],
        metadata={"kernelspec": KERNEL},
    )
    nbformat.write(nb, str(tmp_path / "nbs" / "01_x.ipynb"))
    done = render_docs("reports/docs", root=tmp_path, timeout=120)
    assert done["01_x"]["status"] == "ok", done
    html = (tmp_path / "reports" / "docs" / "01_x.html").read_text()
    assert "IN_TEST 1 cwd ." in html and "$TMPDIR/" in html
    assert "data:image/png;base64," in html and "/tmp/" not in html and str(tmp_path) not in html
    assert "hidden cell" not in html and "default_exp" not in html and "#| export" not in html
    assert "not run here: slow" in html and "must not run" in html  # shown, not run (no traceback)
    assert "#| slow" not in html
    assert "Traceback" not in html
    page = write_index(tmp_path / "reports").read_text()
    assert 'href="docs/01_x.html"' in page

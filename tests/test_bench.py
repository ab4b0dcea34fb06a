"""`dinoscope bench` at a tiny size: every row of its table, sane numbers, real-size JPEGs, nothing left behind.

Only what the table says and what the bench leaves behind is checked here; its timings are the bench's business.
"""

from __future__ import annotations

import re

import pytest
from PIL import Image

from db.engine import open_database
from db.queries import dataset_summaries
from indexer.bench import MEGAPIXELS, write_bench_images
from tests.conftest import IMAGE_SIZE, MODEL, run_cli
from tests.images import noise

TINY = ["--model", MODEL, "--image-size", IMAGE_SIZE, "--batch-size", "2", "--original-size", "28"]
ROWS = {
    "model only (forward passes on decoded inputs)": "images/s",
    "end to end (`index`: decode, embed, thumbnails, database writes)": "images/s",
    "original way (one image at a time, CLS only)": "images/s",
    "end to end / model only": "",
    "dinoscope / original way": "times",
    "peak memory, end to end: first half": "MiB",
    "peak memory, end to end: whole run": "MiB",
}


def _table(output: str) -> dict[str, list[str]]:
    """Row name -> its other cells, for the table's body rows."""
    rows = [line.strip("|").split("|") for line in output.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in rows[2:]}  # after head, rule


def _number(cell: str, unit: str) -> float:
    match = re.fullmatch(rf"(\d+(?:\.\d+)?) ?{unit}", cell)
    assert match, f"{cell!r} is not a number in {unit or 'no unit'}"
    return float(match.group(1))


def test_bench_prints_every_row_with_sane_numbers_and_leaves_no_dataset(tmp_path):
    db = tmp_path / "bench.db"
    result = run_cli("bench", *TINY, "--images", "4", "--original-images", "2", "--workers", "1",
                     "--folder", tmp_path / "jpegs", "--db", db)

    header = result.stdout.splitlines()[0]
    assert MODEL in header and "random weights (speed does not depend on weight values)" in header
    table = _table(result.stdout)
    assert list(table) == list(ROWS)
    results = {name: _number(cells[-1], ROWS[name]) for name, cells in table.items()}
    assert all(value > 0 for value in results.values()), results
    counts = {name: int(cells[1]) for name, cells in table.items() if cells[1]}
    assert list(counts.values()) == [4, 4, 2]
    assert "56 px" in table["model only (forward passes on decoded inputs)"][0]
    assert "1 decode worker" in table["end to end (`index`: decode, embed, thumbnails, database writes)"][0]
    assert "28 px centre crop, fp32, batch 1" in table["original way (one image at a time, CLS only)"][0]
    assert results["peak memory, end to end: whole run"] >= results["peak memory, end to end: first half"]

    with open_database(str(db), readonly=True).session() as session:
        assert dataset_summaries(session) == []  # the end-to-end run's dataset is removed afterwards


def test_bench_times_the_model_again_in_each_precision_compared(tmp_path):
    result = run_cli("bench", *TINY, "--images", "4", "--original-images", "2", "--workers", "0",
                     "--folder", tmp_path / "jpegs", "--precision", "fp32", "--compare-precision", "int8",
                     "--compare-precision", "fp32")  # the measured precision itself is not timed twice
    table = _table(result.stdout)
    model_only, int8 = table["model only (forward passes on decoded inputs)"], table["model only in int8"]
    assert list(table)[:3] == ["model only (forward passes on decoded inputs)", "model only in int8",
                               "end to end (`index`: decode, embed, thumbnails, database writes)"]
    assert int8[:2] == ["56 px, int8, batch 2", "4"] and "fp32" in model_only[0]
    speeds = {name: _number(cells[-1], "images/s") for name, cells in table.items() if cells[-1].endswith("images/s")}
    assert _number(table["model only: int8 / fp32"][-1], "times") == pytest.approx(
        speeds["model only in int8"] / speeds["model only (forward passes on decoded inputs)"], rel=0.02, abs=0.01)
    assert _number(table["model only in int8 / original way"][-1], "times") == pytest.approx(
        speeds["model only in int8"] / speeds["original way (one image at a time, CLS only)"], rel=0.05, abs=0.1)
    assert "model only in fp32" not in table


def test_bench_jpegs_are_one_to_four_megapixels_and_are_reused(tmp_path):
    paths = write_bench_images(tmp_path, 22)  # each from a different sample photograph
    assert len({path.name for path in paths}) == 22
    for path in paths:
        with Image.open(path) as picture:
            assert picture.format == "JPEG" and picture.mode == "RGB"
            assert MEGAPIXELS[0] * 1e6 <= picture.width * picture.height <= MEGAPIXELS[1] * 1e6, path.name
    before = {path: path.stat().st_mtime_ns for path in paths}
    assert write_bench_images(tmp_path, 22) == paths
    assert {path: path.stat().st_mtime_ns for path in paths} == before


@pytest.mark.parametrize(("extra", "message"), [
    (["--images", "2", "--original-images", "3"], "--original-images 3 is more than --images 2"),
    (["--images", "2", "--original-images", "1", "--image-size", "50"],
     "image size 50 is not a multiple of the patch size 14"),
])
def test_bench_explains_bad_settings_in_one_line(tmp_path, extra, message):
    result = run_cli("bench", *TINY, "--folder", tmp_path / "jpegs", *extra, expect=1)
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output


def test_bench_refuses_a_folder_holding_other_images(tmp_path):
    noise(tmp_path / "mine" / "holiday.png", seed=1)
    result = run_cli("bench", *TINY, "--images", "2", "--original-images", "1", "--folder", tmp_path / "mine",
                     expect=1)
    assert "holds 1 image files besides this bench's 2 (such as holiday.png)" in result.output
    assert "give it a folder of its own" in result.output


PIPELINE_ROWS = [
    "everything but the model, decoding in the indexing process",
    "everything but the model, 1 decode worker",
    "everything but the model, 2 decode workers",
    "everything but the model, 3 decode workers",
    "database writer alone (batches prepared beforehand)",
]


def test_bench_pipeline_prints_the_ceiling_without_the_model_and_leaves_no_dataset(tmp_path):
    db = tmp_path / "bench.db"
    result = run_cli("bench", "--pipeline", *TINY, "--images", "5", "--workers", "3", "--folder", tmp_path / "jpegs",
                     "--db", db)

    header = result.stdout.splitlines()[0]
    assert f"the model {MODEL} replaced by a stand-in of its output shapes (21 tokens of 384)" in header
    table = _table(result.stdout)
    assert list(table) == PIPELINE_ROWS
    rates = {name: _number(cells[-2], "images/s") for name, cells in table.items()}
    assert all(cells[1] == "5" and rates[name] > 0 for name, cells in table.items()), table
    for workers, name in enumerate(PIPELINE_ROWS[1:4], start=1):  # a rate per worker where there are workers
        assert _number(table[name][-1], "") == pytest.approx(rates[name] / workers, abs=0.01)
    assert table[PIPELINE_ROWS[0]][-1] == table[PIPELINE_ROWS[-1]][-1] == ""
    assert table[PIPELINE_ROWS[-1]][0] == "batch 2, SQLite"
    fastest = max(PIPELINE_ROWS[:4], key=rates.get)
    assert result.stdout.splitlines()[-1].startswith(f"ceiling without the model: {rates[fastest]:.2f} images/s")

    with open_database(str(db), readonly=True).session() as session:
        assert dataset_summaries(session) == []  # every run's dataset is removed afterwards

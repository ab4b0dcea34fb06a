"""The other commands: datasets, export, remove, samples, and their messages for bad input.

Tests on an `indexed` database or taking `db_url` run twice: on a SQLite file and on a PostgreSQL database."""

from __future__ import annotations

import json
import re
from collections import Counter

import click
import numpy as np
import pytest
from click.testing import CliRunner

from db.engine import open_database
from db.queries import dataset_by_name, load_embeddings, patch_grid
from indexer.cli import main
from indexer.samples import PHOTOS
from tests.conftest import FAST, IMAGE_SIZE, MODEL, run_cli
from tests.images import noise
from tests.servers import free_port, start, stop, wait_until_healthy


@pytest.fixture
def indexed(tmp_path, db_url) -> str:
    noise(tmp_path / "photos" / "cats" / "a.png", seed=1)
    noise(tmp_path / "photos" / "dogs" / "b.png", seed=2)
    noise(tmp_path / "photos" / "c.png", seed=3)
    run_cli("index", tmp_path / "photos", "--db", db_url, "--random-weights", *FAST)
    return db_url


def test_datasets_lists_counts_provenance_and_warns_of_random_weights(indexed, tmp_path):
    noise(tmp_path / "more" / "x.png", seed=9)
    run_cli("index", tmp_path / "more", "--dataset", "extra", "--db", indexed, "--random-weights", *FAST)
    output = run_cli("datasets", "--db", indexed).output
    assert f"extra: 1 images from {tmp_path / 'more'}" in output
    assert f"photos: 3 images from {tmp_path / 'photos'}  [RANDOM WEIGHTS: not meaningful]" in output
    assert f"{MODEL} at {IMAGE_SIZE} px (4x4 patches, 384 dims)" in output and "last run completed" in output


def test_datasets_reads_the_database_from_the_environment(indexed, monkeypatch):
    monkeypatch.setenv("DINOSCOPE_DB", indexed)
    assert "photos: 3 images" in run_cli("datasets").output


def test_export_round_trips_through_numpy_load(indexed, tmp_path):
    target = tmp_path / "photos.npz"
    assert "wrote 3 images of 'photos'" in run_cli("export", "photos", "--db", indexed, "-o", target,
                                                  "--patch-grids").output
    archive = np.load(target)  # no allow_pickle needed
    assert list(archive["relpaths"]) == ["c.png", "cats/a.png", "dogs/b.png"]
    assert list(archive["labels"]) == ["", "cats", "dogs"]
    assert json.loads(str(archive["provenance"]))["model_name"] == MODEL
    with open_database(indexed, readonly=True).session() as session:
        ids, matrix = load_embeddings(session, dataset_by_name(session, "photos"))
        np.testing.assert_array_equal(archive["image_ids"], ids)
        np.testing.assert_array_equal(archive["embeddings"], matrix)
        for row, image_id in enumerate(ids):
            np.testing.assert_array_equal(archive["patch_grids"][row], patch_grid(session, int(image_id)))
    run_cli("export", "photos", "--db", indexed, "-o", target)
    assert "patch_grids" not in np.load(target)


def test_remove_asks_first_and_then_removes(indexed):
    refused = CliRunner().invoke(main, ["remove", "photos", "--db", indexed], input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.output
    assert "photos: 3 images" in run_cli("datasets", "--db", indexed).output
    assert "removed dataset 'photos'" in run_cli("remove", "photos", "--yes", "--db", indexed).output
    assert "no datasets yet" in run_cli("datasets", "--db", indexed).output


def test_unknown_dataset_names_the_known_ones(indexed, tmp_path):
    for command in (["remove", "dogs", "--yes"], ["export", "dogs", "-o", tmp_path / "x.npz"]):
        result = run_cli(*command, "--db", indexed, expect=1)
        assert "no dataset named 'dogs' (datasets: photos)" in result.output


def test_samples_are_copied_into_labelled_folders(tmp_path):
    output = run_cli("samples", tmp_path / "s").output
    files = sorted(p.relative_to(tmp_path / "s").as_posix() for p in (tmp_path / "s").rglob("*.*"))
    assert f"{len(files)} sample images" in output
    assert {"animals/chelsea.png", "buildings/china.jpg", "kitchen/coffee.png", "fish/clownfish.jpg"} <= set(files)
    per_label = Counter(file.split("/")[0] for file in files)
    assert len(files) == 44 and len(per_label) == 6 and set(per_label.values()) <= {7, 8}  # balanced
    mtimes = [p.stat().st_mtime_ns for p in sorted((tmp_path / "s").rglob("*.*"))]
    run_cli("samples", tmp_path / "s")
    assert mtimes == [p.stat().st_mtime_ns for p in sorted((tmp_path / "s").rglob("*.*"))]  # left alone


def test_every_bundled_sample_photograph_has_a_free_licence_and_a_source():
    row = re.compile(r"^\| ([^|]+?) \| ([^|]+?) \| ([^|]+?) \| <(https://[^>]+)> \|$", re.MULTILINE)
    sections = re.split(r"^## ", (PHOTOS / "LICENCES.md").read_text(), flags=re.MULTILINE)[1:]
    rows = {(section.split()[0], name): (licence, source) for section in sections
            for name, _author, licence, source in row.findall(section)}
    photos = {(path.parent.name, path.name) for path in PHOTOS.glob("*/*")}
    assert len(photos) == 41 and set(rows) == photos
    assert {licence for licence, _ in rows.values()} <= {"public domain", "CC0 1.0"}


def test_wrong_paths_and_conflicting_options_name_themselves(tmp_path):
    result = run_cli("index", tmp_path / "nowhere", "--random-weights", expect=2)
    assert "nowhere" in result.output and "does not exist" in result.output
    (tmp_path / "photos").mkdir()
    result = run_cli("index", tmp_path / "photos", "--random-weights", "--weights", tmp_path / "w.pt", expect=2)
    assert "--weights and --random-weights exclude each other" in result.output
    result = run_cli("datasets", "--db", tmp_path / "missing.db", expect=1)
    assert f"no database at {tmp_path / 'missing.db'}" in result.output


def test_an_unreachable_server_is_one_line_that_hides_the_password(tmp_path):
    url = "postgresql+psycopg://indexer:secret@127.0.0.1:1/photos"
    (tmp_path / "photos").mkdir()
    noise(tmp_path / "photos" / "a.png", seed=1)
    for command in (["datasets"], ["index", tmp_path / "photos", "--random-weights", *FAST]):
        output = run_cli(*command, "--db", url, expect=1).output
        assert output.startswith("Error: cannot open database postgresql+psycopg://indexer:***@127.0.0.1:1/photos: ")
        assert "secret" not in output and output.count("\n") == 1


def test_demo_indexes_the_samples_and_serves_the_dashboard(tmp_path):
    import urllib.request

    import requests

    port = free_port()
    log = tmp_path / "demo.log"
    process = start(["demo", "--folder", tmp_path / "samples", "--db", tmp_path / "demo.db", "--random-weights",
                     "--port", port, "--cache-dir", tmp_path / "cache"], log)
    try:
        wait_until_healthy(process, f"http://127.0.0.1:{port}", log, timeout_s=240)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/gallery?dataset=samples", timeout=10) as page:
            assert page.status == 200 and b"dinoscope" in page.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/thumbnails/1/gallery.jpg", timeout=10) as image:
            assert image.headers["Content-Type"] == "image/jpeg"
        assert (tmp_path / "cache" / "jobs").is_dir()  # the job server of the cache folder asked for
        photo = next((tmp_path / "samples").rglob("*.jpg"))
        sent = requests.post(f"http://127.0.0.1:{port}/image-sets/upload", headers={"X-Dinoscope-Upload": "1"},
                             files=[("files", (photo.name, photo.read_bytes()))], data={"dataset": "mine"}, timeout=30)
        assert sent.status_code == 200 and sent.json()["ticket"]  # the demo takes image sets
        assert (tmp_path / "uploads" / sent.json()["set"]).is_dir()
    finally:
        stop(process)
    output = log.read_text()
    assert "samples: 44 added" in output
    assert f"dinoscope dashboard on http://127.0.0.1:{port}/ (development server" in output
    assert len(list((tmp_path / "samples").rglob("*.*"))) == 44


def test_synthetic_writes_a_dataset_without_a_model_and_keeps_existing_ones(db_url):
    db = db_url
    output = run_cli("synthetic", "scale", "--count", "120", "--dim", "16", "--clusters", "4", "--db", db).output
    assert "wrote synthetic dataset 'scale': 120 images" in output
    assert "scale: 120 images from synthetic:scale" in run_cli("datasets", "--db", db).output
    refused = run_cli("synthetic", "scale", "--count", "5", "--db", db, expect=1)
    assert "a dataset named 'scale' exists already" in refused.output
    assert "scale: 120 images" in run_cli("datasets", "--db", db).output


@pytest.mark.parametrize(("arguments", "environment", "level"), [
    (["datasets"], None, "WARNING"),
    (["--log-level", "info", "datasets"], None, "INFO"),
    (["datasets"], "DEBUG", "DEBUG"),
    (["--log-level", "error", "datasets"], "DEBUG", "ERROR"),
])
def test_the_log_level_is_an_option_an_environment_variable_or_the_commands_default(
        sample_db, monkeypatch, capsys, arguments, environment, level):
    import logging

    if environment:
        monkeypatch.setenv("DINOSCOPE_LOG_LEVEL", environment)
    else:
        monkeypatch.delenv("DINOSCOPE_LOG_LEVEL", raising=False)
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)  # restored after the test, as are the handlers
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    assert CliRunner().invoke(main, [*arguments, "--db", str(sample_db)]).exit_code == 0
    assert logging.getLevelName(root.level) == level
    logging.getLogger("dinoscope.check").error("the cache folder could not be written")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.endswith(" ERROR dinoscope.check: the cache folder could not be written")
    assert line[:4].isdigit()  # a timestamp first


# The command line's structure: commands by owner, errors at the edge, the README from the code --------------------

COMMANDS = {"bench", "datasets", "demo", "export", "index", "remove", "samples", "serve", "synthetic", "users",
            "worker"}


def test_help_lists_every_command_those_loaded_lazily_included():
    output = run_cli("--help").output
    listed = {line.split()[0] for line in output.split("Commands:")[1].splitlines() if line.strip()}
    assert listed == COMMANDS
    assert "Add USER to FILE" in run_cli("users", "add", "--help").output
    assert "--job-slots" in run_cli("serve", "--help").output


def _packages_imported_by(*arguments: str) -> tuple[str, set[str]]:
    """What `dinoscope ARGUMENTS` prints in a process of its own, and which of the heavy packages it imported."""
    import ast
    import subprocess
    import sys

    script = ("import sys\nfrom indexer.cli import main\ntry:\n    main(sys.argv[1:])\n"
              "except SystemExit as end:\n    assert end.code in (0, None), end.code\n"
              "print(sorted({name.split('.')[0] for name in sys.modules} & {'dashboard', 'dash', 'torch', 'timm'}))")
    result = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    *printed, imported = result.stdout.splitlines()
    return "\n".join(printed), set(ast.literal_eval(imported))


def test_the_indexers_commands_import_neither_the_dashboard_nor_torch(tmp_path):
    open_database(str(tmp_path / "empty.db"))
    printed, imported = _packages_imported_by("datasets", "--db", str(tmp_path / "empty.db"))
    assert printed == "no datasets yet: index a folder with `dinoscope index FOLDER`" and imported == set()
    printed, imported = _packages_imported_by("--help")
    assert "serve " in printed and imported == {"dashboard"}  # listing loads the dashboard's commands, not Dash


def test_every_domain_error_is_a_dinoscope_error():
    from dashboard.auth import UsersFileError
    from dashboard.framing import FrameAncestorsError
    from dashboard.jobs import BrokerError
    from dashboard.login_limits import LoginLimitsError
    from dashboard.query_image import QueryRefused
    from db import DinoscopeDbError, DinoscopeError
    from indexer.bench import BenchError
    from indexer.model import ModelError
    from indexer.patch_reduction import TooFewPatchTokens
    from indexer.run import IndexRefused

    for error in (DinoscopeDbError, IndexRefused, ModelError, TooFewPatchTokens, BenchError, UsersFileError,
                  LoginLimitsError, BrokerError, QueryRefused, FrameAncestorsError):
        assert issubclass(error, DinoscopeError), error


def test_the_root_group_alone_turns_a_dinoscope_error_into_one_line(monkeypatch):
    from db import DinoscopeError
    from indexer import cli

    class Refusal(DinoscopeError):
        pass

    @click.command()
    @click.argument("what")
    def refuse(what):
        if what == "refusal":
            raise Refusal("cannot do that: do this instead")
        raise RuntimeError("a bug")

    monkeypatch.setitem(main.commands, "refuse", refuse)
    result = CliRunner().invoke(main, ["refuse", "refusal"])
    assert (result.exit_code, result.output) == (1, "Error: cannot do that: do this instead\n")
    result = CliRunner().invoke(main, ["refuse", "bug"])  # anything else is a bug: its traceback is not hidden
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)
    assert cli.LAZY_COMMANDS.keys() <= COMMANDS


def test_the_readme_command_sections_are_what_the_commands_say():
    from pathlib import Path

    from cogapp import Cog

    readme = Path(__file__).parents[1] / "README.md"
    text = readme.read_text()
    for path in sorted(COMMANDS - {"users", "bench"} | {"users add"}):  # bench's table is under Performance
        assert f'cog.outl(docs.section("{path}"))' in text, path
    assert 'cog.outl(docs.options_table("bench"))' in text
    regenerated = Cog().process_string(text, str(readme))
    assert regenerated == text, "README.md differs from the commands: run `python -m cogapp -r README.md`"
    stale = text.replace("| `--quiet` |  | No progress bars. |", "| `--quiet` |  | no bars |")
    assert stale != text and Cog().process_string(stale, str(readme)) == text


def test_the_command_lines_model_names_are_the_models():
    import torch

    from indexer import cli, model

    assert cli.DEFAULT_MODEL == model.DEFAULT_MODEL  # the command line names it without importing torch
    assert model.resolve_device("cpu") == torch.device("cpu")
    for precision in cli.PRECISIONS:
        assert model.resolve_precision(precision, torch.device("cpu")) in cli.PRECISIONS[1:]


def test_int8_is_offered_by_every_command_that_runs_the_model():
    from indexer.cli_docs import command

    for path, name in (("index", "precision"), ("bench", "precision"), ("bench", "compare_precisions")):
        option = next(param for param in command(path).params if param.name == name)
        assert list(option.type.choices) == ["auto", "fp32", "bf16", "fp16", "int8"], (path, name)
    assert "int8 (CPU only, never auto)" in " ".join(run_cli("index", "--help").stdout.split())


def test_every_option_read_from_the_environment_names_its_variable_in_its_help():
    from indexer.cli_docs import command

    paths = ["", *sorted(COMMANDS - {"users"}), "users add"]
    options = [param for path in paths for param in command(path).params if isinstance(param, click.Option)]
    with_variables = [option for option in options if option.envvar]
    assert len(with_variables) >= 12
    for option in with_variables:
        assert f"Environment: {option.envvar}." in option.help, option.name

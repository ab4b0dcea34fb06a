"""The model: weights from a file, from an offline Hugging Face cache, or random; and fidelity to timm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file
from sqlalchemy import select

from db.engine import open_database
from db.queries import dataset_by_name, load_embeddings, patch_grid
from db.schema import Image as ImageRow
from db.schema import IndexRun
from indexer.model import ModelError, WeightsChoice, inference_model, load_model, resolve_precision
from tests.conftest import FAST, IMAGE_SIZE, MODEL, hub_snapshot, run_cli, run_cli_process
from tests.images import noise

GRID = IMAGE_SIZE // 14


@pytest.fixture
def photos(tmp_path) -> Path:
    noise(tmp_path / "photos" / "a" / "wide.png", seed=5, size=(120, 40))
    noise(tmp_path / "photos" / "b" / "square.png", seed=6, size=(70, 70))
    return tmp_path / "photos"


def _stored(db: Path, dataset: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with open_database(str(db), readonly=True).session() as session:
        ids, matrix = load_embeddings(session, dataset_by_name(session, dataset))
        paths = dict(session.execute(select(ImageRow.id, ImageRow.relpath)).all())
        return {paths[int(i)]: (row, patch_grid(session, int(i))) for i, row in zip(ids, matrix)}


def test_a_weights_file_reproduces_the_saved_model_exactly(weights_file):
    saved = load_file(str(weights_file))
    loaded = load_model(MODEL, WeightsChoice("file", weights_file), 518)
    state = loaded.model.state_dict()
    assert set(state) == set(saved)
    assert all(torch.equal(state[key], saved[key]) for key in saved)
    assert loaded.weights.kind == "file" and loaded.weights.identity.startswith("sha256:")


def test_stored_vectors_equal_timms_forward_features(photos, tmp_path, weights_file):
    db = tmp_path / "index.db"
    run_cli("index", photos, "--db", db, "--weights", weights_file, "--precision", "fp32", *FAST)

    model = timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay={"file": str(weights_file)},
                              img_size=IMAGE_SIZE).eval()
    transform = timm.data.create_transform(input_size=(3, IMAGE_SIZE, IMAGE_SIZE), interpolation="bicubic",
                                           crop_pct=1.0, crop_mode="squash", mean=model.pretrained_cfg["mean"],
                                           std=model.pretrained_cfg["std"])
    for relpath, (cls, grid) in _stored(db, "photos").items():
        pixels = transform(Image.open(photos / relpath).convert("RGB")).unsqueeze(0)
        with torch.inference_mode():
            tokens = model.forward_features(pixels)[0]
        np.testing.assert_allclose(cls, tokens[0].numpy(), rtol=1e-4, atol=1e-4)
        expected_grid = tokens[model.num_prefix_tokens:].reshape(GRID, GRID, -1).numpy()
        np.testing.assert_allclose(grid.astype(np.float32), expected_grid, rtol=2e-3, atol=2e-3)


def test_bf16_embeddings_agree_with_fp32(photos, tmp_path, weights_file):
    runs = {}
    for precision in ("fp32", "bf16"):
        db = tmp_path / f"{precision}.db"
        run_cli("index", photos, "--db", db, "--weights", weights_file, "--precision", precision, *FAST)
        runs[precision] = _stored(db, "photos")
    for relpath, (cls, _) in runs["fp32"].items():
        bf16 = runs["bf16"][relpath][0]
        assert np.dot(cls, bf16) / np.linalg.norm(cls) / np.linalg.norm(bf16) > 0.999


def test_int8_is_recorded_as_the_datasets_precision_and_embeds_close_to_fp32(photos, tmp_path):
    runs = {}
    for precision in ("fp32", "int8"):
        db = tmp_path / f"{precision}.db"
        run_cli("index", photos, "--db", db, "--random-weights", "--precision", precision, *FAST)
        runs[precision] = _stored(db, "photos")
        with open_database(str(db), readonly=True).session() as session:
            assert dataset_by_name(session, "photos").precision == precision
            assert [options["precision"] for options in session.scalars(select(IndexRun.options))] == [precision]
        assert f"dims), {precision}, weights random-init" in run_cli("datasets", "--db", db).stdout
    for relpath, (cls, grid) in runs["fp32"].items():
        int8, int8_grid = runs["int8"][relpath]
        assert not np.array_equal(cls, int8)  # the quantised layers ran, not the float32 ones
        assert np.dot(cls, int8) / np.linalg.norm(cls) / np.linalg.norm(int8) > 0.995
        np.testing.assert_allclose(int8_grid.astype(np.float32), grid.astype(np.float32), atol=0.05)


def test_an_int8_dataset_stays_int8_when_a_later_run_leaves_the_precision_to_auto(photos, tmp_path):
    db = tmp_path / "index.db"
    run_cli("index", photos, "--db", db, "--random-weights", "--precision", "int8", *FAST)
    noise(photos / "b" / "later.png", seed=7, size=(60, 90))
    output = run_cli("index", photos, "--db", db, "--random-weights", *FAST).stdout
    assert "1 added" in output and "this run embeds in" not in output
    with open_database(str(db), readonly=True).session() as session:
        assert [options["precision"] for options in session.scalars(select(IndexRun.options))] == ["int8", "int8"]
    later, _grid = _stored(db, "photos")["b/later.png"]
    run_cli("index", photos, "--db", tmp_path / "fp32.db", "--random-weights", "--precision", "fp32", *FAST)
    assert not np.array_equal(later, _stored(tmp_path / "fp32.db", "photos")["b/later.png"][0])


def test_int8_quantises_the_linear_layers_once_and_only_on_the_cpu():
    loaded = load_model(MODEL, WeightsChoice("random"), IMAGE_SIZE)
    linear_layers = sum(type(module) is torch.nn.Linear for module in loaded.model.modules())
    model = inference_model(loaded, torch.device("cpu"), "int8")
    quantised = [module for module in model.modules() if type(module) is torch.ao.nn.quantized.dynamic.Linear]
    assert loaded.quantized and len(quantised) == linear_layers > 0
    assert not any(type(module) is torch.nn.Linear for module in model.modules())
    again = inference_model(loaded, torch.device("cpu"), "int8")
    assert [module for module in again.modules() if type(module) is torch.ao.nn.quantized.dynamic.Linear] == quantised

    assert resolve_precision("int8", torch.device("cpu")) == "int8"
    assert resolve_precision("auto", torch.device("cpu")) != "int8"
    for device in ("cuda", "mps"):
        with pytest.raises(ModelError, match=rf"^--precision int8 .* runs on the CPU only, not on {device}: use "
                                             rf"--device cpu with it, or --precision bf16 or fp16 on {device}$"):
            resolve_precision("int8", torch.device(device))


def test_decode_workers_give_the_same_vectors_as_the_main_process(photos, tmp_path):
    runs = {}
    for workers in ("0", "2"):
        db = tmp_path / f"w{workers}.db"
        run_cli("index", photos, "--db", db, "--random-weights", "--precision", "fp32",
                "--model", MODEL, "--image-size", IMAGE_SIZE, "--workers", workers, "--batch-size", "1", "--quiet")
        runs[workers] = _stored(db, "photos")
    for relpath, (cls, grid) in runs["0"].items():
        np.testing.assert_array_equal(cls, runs["2"][relpath][0])
        np.testing.assert_array_equal(grid, runs["2"][relpath][1])


def test_random_weights_are_the_same_in_every_run():
    first = load_model(MODEL, WeightsChoice("random"), IMAGE_SIZE).model.state_dict()
    second = load_model(MODEL, WeightsChoice("random"), IMAGE_SIZE).model.state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)


def test_weights_from_an_offline_hugging_face_cache(photos, tmp_path, weights_file):
    revision = "0123456789abcdef0123456789abcdef01234567"
    hub_snapshot(tmp_path / "hf", revision, weights_file)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hf")}

    hub_db, file_db = tmp_path / "hub.db", tmp_path / "file.db"
    fast = ["--model", MODEL, "--image-size", IMAGE_SIZE, "--workers", "0", "--quiet", "--precision", "fp32"]
    result = run_cli_process("index", photos, "--db", hub_db, *fast, env=env)
    assert result.returncode == 0, result.stderr
    run_cli("index", photos, "--db", file_db, "--weights", weights_file, *fast)

    with open_database(str(hub_db), readonly=True).session() as session:
        dataset = dataset_by_name(session, "photos")
        assert (dataset.weights_kind, dataset.weights_identity) == ("hub", f"hf-hub:timm/{MODEL}@{revision}")
    from_hub, from_file = _stored(hub_db, "photos"), _stored(file_db, "photos")
    for relpath in from_file:
        np.testing.assert_array_equal(from_hub[relpath][0], from_file[relpath][0])


def test_offline_without_weights_says_so_in_one_line(photos, tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    result = run_cli_process("index", photos, "--db", tmp_path / "index.db", "--workers", "0", "--quiet", env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: no pretrained weights for vit_base_patch14_reg4_dinov2")
    assert "--weights FILE" in lines[0] and "--random-weights" in lines[0] and "hf download" in lines[0]


def test_unusable_weights_and_sizes_are_explained(tmp_path, weights_file):
    (tmp_path / "junk.safetensors").write_bytes(b"not a tensor file")
    with pytest.raises(ModelError, match=r"weights file .*junk.safetensors cannot be loaded into"):
        load_model(MODEL, WeightsChoice("file", tmp_path / "junk.safetensors"), IMAGE_SIZE)
    with pytest.raises(ModelError, match=r"weights file .*missing.safetensors does not exist"):
        load_model(MODEL, WeightsChoice("file", tmp_path / "missing.safetensors"), IMAGE_SIZE)
    with pytest.raises(ModelError, match="cannot be loaded into vit_base"):
        load_model("vit_base_patch14_reg4_dinov2.lvd142m", WeightsChoice("file", weights_file), IMAGE_SIZE)
    with pytest.raises(ModelError, match="image size 50 is not a multiple of the patch size 14"):
        load_model(MODEL, WeightsChoice("random"), 50)
    with pytest.raises(ModelError, match="timm has no model named 'vit_imaginary'"):
        load_model("vit_imaginary", WeightsChoice("random"), IMAGE_SIZE)

"""Query by upload: which uploads are refused and why, the server's request limit, rebuilding a dataset's exact
model (or saying why it cannot be), and uploads ranked against a dataset with the real architecture."""

from __future__ import annotations

import json
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import timm
from PIL import Image
from safetensors.torch import load_file, save_file

from dashboard.data import DatasetStore, DatasetView
from dashboard.query_image import (
    MAX_REQUEST_BYTES,
    MAX_UPLOAD_BYTES,
    ModelUnavailable,
    QueryModels,
    RecordedModel,
    UploadRefused,
    decode_upload,
    embed_upload,
    recorded_model,
    upload_bytes,
)
from dashboard.similarity_view import images_similar_to
from indexer.model import RANDOM_SEED
from tests.conftest import FAST, IMAGE_SIZE, MODEL, hub_snapshot, run_cli
from tests.images import EXIF_ORIENTATION, data_url, encoded, jpeg_bytes, mime_type, noise, write_bad_files

RANDOM_IDENTITY = f"random-init (seed {RANDOM_SEED}, timm {timm.__version__})"


@pytest.fixture
def photos(tmp_path) -> Path:
    """A PNG, a transparent PNG and a JPEG turned by its EXIF orientation: each decoding path of the indexer."""
    folder = tmp_path / "photos"
    noise(folder / "a" / "wide.png", seed=5, size=(120, 40))
    pixels = np.random.default_rng(7).integers(0, 256, (50, 70, 4), dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(folder / "a" / "clear.png")
    turned = Image.fromarray(np.random.default_rng(8).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    (folder / "b" / "turned.jpg").parent.mkdir(parents=True)
    (folder / "b" / "turned.jpg").write_bytes(jpeg_bytes(turned, exif=exif.tobytes()))
    return folder


# The upload itself ---------------------------------------------------------------------------------------------


def test_an_upload_arrives_as_the_bytes_of_the_file():
    data = encoded(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
    assert upload_bytes(data_url(data)) == data
    for contents in (None, "", "just text", "data:image/png,not-base64-marked"):
        with pytest.raises(UploadRefused, match="The upload did not arrive as a file"):
            upload_bytes(contents)
    with pytest.raises(UploadRefused, match="not valid base64"):
        upload_bytes("data:image/png;base64,@@@@")


def test_an_upload_over_the_limit_is_refused_with_its_size():
    assert len(upload_bytes(data_url(bytes(MAX_UPLOAD_BYTES)))) == MAX_UPLOAD_BYTES
    with pytest.raises(UploadRefused, match=r"uploads are limited to 10 MB"):
        upload_bytes(data_url(bytes(MAX_UPLOAD_BYTES + 1)))
    with pytest.raises(UploadRefused, match=r"^The file is 11\.0 MB; uploads are limited to 10 MB"):
        upload_bytes(data_url(bytes(11 * 1024**2)))


def test_the_server_itself_refuses_a_request_over_its_limit(dashboard_app):
    client = dashboard_app.server.test_client()
    oversized = b'{"padding": "' + b"x" * MAX_REQUEST_BYTES + b'"}'
    response = client.post("/_dash-update-component", data=oversized, content_type="application/json")
    assert response.status_code == 413
    # while the largest upload the page takes still fits in its callback request, with room to spare
    request = {"output": "..similarity-upload-facts.children...", "outputs": [], "changedPropIds": [],
               "inputs": [{"id": "similarity-upload-accepted", "property": "data",
                           "value": data_url(bytes(MAX_UPLOAD_BYTES), "image/jpeg")}],
               "state": [{"id": "similarity-upload", "property": "filename", "value": "x" * 255}]}
    assert len(json.dumps(request)) < MAX_REQUEST_BYTES - 1024**2


def test_files_that_are_not_usable_images_are_refused_with_the_reason(tmp_path):
    reasons = write_bad_files(tmp_path)  # empty, not an image, truncated, decompression bomb
    del reasons["bomb.png"]  # refused earlier, by its size: see the next test
    for name, word in reasons.items():
        with pytest.raises(UploadRefused, match=word) as refused:
            decode_upload((tmp_path / name).read_bytes(), IMAGE_SIZE)
        message = str(refused.value)
        assert message.startswith("This file cannot be used: ") and message.endswith("(upload a JPG or PNG)")
        assert "\n" not in message


def test_a_png_of_too_many_pixels_is_refused_from_its_header_before_it_is_decoded(monkeypatch, tmp_path):
    """A small PNG file can hold 80 megapixels, which would take a job's memory into gigabytes once decoded."""
    from dashboard import query_image

    data = encoded(Image.new("1", (10_000, 8_000)), "PNG")
    assert len(data) < 100_000
    monkeypatch.setattr(query_image, "decode_image", lambda *args: pytest.fail("the PNG was decoded"))
    with pytest.raises(UploadRefused, match=r"^This PNG is 10000 x 8000 pixels \(80 megapixels\); uploads other "
                                            r"than JPEG are limited to 24 megapixels"):
        decode_upload(data, IMAGE_SIZE)
    bomb = tmp_path / "bomb"
    write_bad_files(bomb)
    with pytest.raises(UploadRefused, match=r"\(100 megapixels\)"):
        decode_upload((bomb / "bomb.png").read_bytes(), IMAGE_SIZE)
    monkeypatch.undo()
    # A JPEG of as many pixels is decoded at a reduced scale instead, which keeps it small.
    decoded, found = decode_upload(encoded(Image.new("RGB", (6000, 4500), (9, 9, 9)), "JPEG"), IMAGE_SIZE)
    assert found == "JPEG" and (decoded.width, decoded.height) == (6000, 4500) and decoded.rgb.size == (750, 563)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
def test_images_other_than_jpg_and_png_are_refused(fmt):
    with pytest.raises(UploadRefused, match=f"^This is a {fmt} image: upload a JPG or PNG$"):
        decode_upload(encoded(Image.new("RGB", (20, 20), (9, 9, 9)), fmt), IMAGE_SIZE)


def test_a_jpg_is_turned_upright_and_a_png_taken_as_it_is(photos):
    decoded, found = decode_upload((photos / "b" / "turned.jpg").read_bytes(), IMAGE_SIZE)
    assert found == "JPEG" and (decoded.width, decoded.height) == (60, 90) and decoded.rgb.size == (60, 90)
    decoded, found = decode_upload((photos / "a" / "clear.png").read_bytes(), IMAGE_SIZE)
    assert found == "PNG" and (decoded.width, decoded.height) == (70, 50) and decoded.rgb.mode == "RGB"


# The dataset's model -------------------------------------------------------------------------------------------


def test_each_model_is_built_once_per_process_and_a_pickled_copy_starts_empty():
    recorded = RecordedModel(MODEL, "random", RANDOM_IDENTITY, None, IMAGE_SIZE, "fp32")
    smaller = RecordedModel(MODEL, "random", RANDOM_IDENTITY, None, 28, "fp32")
    builds = []
    models = QueryModels(capacity=1)
    first = models.get(recorded, on_build=lambda: builds.append(recorded.image_size))
    assert models.get(recorded, on_build=lambda: builds.append(recorded.image_size)) is first
    assert builds == [IMAGE_SIZE]
    assert models.get(smaller, on_build=lambda: builds.append(28)).loaded.image_size == 28  # evicts the first
    assert models.get(recorded, on_build=lambda: builds.append(IMAGE_SIZE)) is not first
    assert builds == [IMAGE_SIZE, 28, IMAGE_SIZE]
    copy = pickle.loads(pickle.dumps(models))  # what a background job receives
    copy.get(recorded, on_build=lambda: builds.append("copy"))
    assert builds[-1] == "copy"


def test_random_weights_made_by_another_timm_are_not_passed_off_as_the_same():
    recorded = RecordedModel(MODEL, "random", "random-init (seed 0, timm 0.9.0)", None, IMAGE_SIZE, "fp32")
    upload = data_url(encoded(Image.new("RGB", (30, 30), (200, 10, 10)), "PNG"))
    with pytest.raises(ModelUnavailable, match=re.escape(
            f"The weights on this server ({RANDOM_IDENTITY}) are not the ones this dataset was indexed with "
            "(random-init (seed 0, timm 0.9.0))")):
        embed_upload(QueryModels(), recorded, upload)


def test_an_indexed_file_uploaded_gets_its_stored_embedding_until_the_weights_file_is_gone(
        tmp_path, photos, weights_file):
    weights = tmp_path / "models" / "dino.safetensors"
    weights.parent.mkdir()
    shutil.copyfile(weights_file, weights)
    db = tmp_path / "index.db"
    run_cli("index", photos, "--db", db, "--weights", weights, "--precision", "fp32", *FAST)
    store = DatasetStore(f"sqlite:///{db}")
    recorded, view = recorded_model(store, "photos"), store.view("photos")
    assert (recorded.weights_kind, recorded.weights_source) == ("file", str(weights.resolve()))

    models = QueryModels()
    for position, relpath in enumerate(view.relpaths):
        upload = embed_upload(models, recorded, data_url((photos / relpath).read_bytes(), mime_type(relpath)))
        # the same decoding, transform and network as the indexer: the same vector, to float32 rounding
        np.testing.assert_allclose(upload.embedding, view.embeddings[position], rtol=1e-4, atol=1e-4)
        best = images_similar_to(view, upload.embedding, 1)[0]
        assert best.image_id == view.image_ids[position] and best.score == pytest.approx(1.0, abs=1e-5)

    any_upload = data_url((photos / view.relpaths[0]).read_bytes())
    weights.rename(tmp_path / "moved.safetensors")
    with pytest.raises(ModelUnavailable, match=re.escape(
            "This dataset's model cannot be rebuilt on this server, so uploads cannot be compared with its images: "
            f"weights file {weights.resolve()} does not exist")):
        embed_upload(QueryModels(), recorded, any_upload)
    embed_upload(models, recorded, any_upload)  # a model built before, from the right file, still serves

    altered = load_file(str(tmp_path / "moved.safetensors"))
    altered["cls_token"] = altered["cls_token"] + 1.0
    save_file(altered, str(weights))
    with pytest.raises(ModelUnavailable, match=re.escape(
            f"are not the ones this dataset was indexed with ({recorded.weights_identity}), so uploads cannot be "
            f"compared with its images: restore those weights at {weights.resolve()}, or index the dataset again")):
        embed_upload(QueryModels(), recorded, any_upload)


def test_an_upload_to_an_int8_dataset_is_embedded_in_int8(tmp_path, photos):
    db = tmp_path / "index.db"
    run_cli("index", photos, "--db", db, "--random-weights", "--precision", "int8", "--batch-size", "1", *FAST)
    store = DatasetStore(f"sqlite:///{db}")
    recorded, view = recorded_model(store, "photos"), store.view("photos")
    assert recorded.precision == "int8"
    in_fp32 = RecordedModel(recorded.name, recorded.weights_kind, recorded.weights_identity, None,
                            recorded.image_size, "fp32")
    models = QueryModels(capacity=2)
    for position, relpath in enumerate(view.relpaths):
        upload = data_url((photos / relpath).read_bytes(), mime_type(relpath))
        # one image a batch, as indexed: the same int8 activation scales, so the same vector to float32 rounding
        np.testing.assert_allclose(embed_upload(models, recorded, upload).embedding, view.embeddings[position],
                                   rtol=1e-4, atol=1e-4)
        assert not np.allclose(embed_upload(models, in_fp32, upload).embedding, view.embeddings[position],
                               rtol=1e-4, atol=1e-4)
    assert str(models.get(recorded).device) == "cpu"


def test_hub_weights_come_only_from_the_cached_snapshot_the_dataset_names(tmp_path, photos, weights_file,
                                                                          monkeypatch):
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = hub_snapshot(tmp_path / "hf", revision, weights_file)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    db = tmp_path / "index.db"
    run_cli("index", photos, "--db", db, "--precision", "fp32", *FAST)
    store = DatasetStore(f"sqlite:///{db}")
    recorded, view = recorded_model(store, "photos"), store.view("photos")
    assert recorded.weights_identity == f"hf-hub:timm/{MODEL}@{revision}"
    upload = data_url((photos / view.relpaths[0]).read_bytes(), mime_type(view.relpaths[0]))
    np.testing.assert_allclose(embed_upload(QueryModels(), recorded, upload).embedding, view.embeddings[0],
                               rtol=1e-4, atol=1e-4)

    newer = "fedcba9876543210fedcba9876543210fedcba98"  # the cache moves on: main is now another snapshot
    hub_snapshot(tmp_path / "hf", newer, weights_file)
    shutil.rmtree(repo / "snapshots" / revision)
    with pytest.raises(ModelUnavailable, match=re.escape(
            f"holds no snapshot {revision} of timm/{MODEL}: copy it there from a machine with a network "
            f"(`hf download timm/{MODEL} --revision {revision}`)")):
        embed_upload(QueryModels(), recorded, upload)


def test_uploading_each_sample_finds_that_sample_first_with_cosine_one(sample_db):
    """The sample set indexed with the small model and seeded random weights, which the server rebuilds."""
    store = DatasetStore(f"sqlite:///{sample_db}")
    recorded, view = recorded_model(store, "samples"), store.view("samples")
    assert recorded.weights_kind == "random"
    models = QueryModels()
    for position, relpath in enumerate(view.relpaths):
        data = (sample_db.parent / "samples" / relpath).read_bytes()
        upload = embed_upload(models, recorded, data_url(data, mime_type(relpath)))
        stored = view.embeddings[position]
        cosine = float(upload.embedding @ stored / np.linalg.norm(upload.embedding) / np.linalg.norm(stored))
        if recorded.precision == "fp32":
            np.testing.assert_allclose(upload.embedding, stored, rtol=1e-4, atol=1e-4)
        else:  # bf16 or fp16: the same arithmetic, in another batch
            assert cosine > 0.9999
        best = images_similar_to(view, upload.embedding, 3)
        assert best[0].image_id == view.image_ids[position] and best[0].score == pytest.approx(cosine, abs=1e-6)
        assert best[0].score > best[1].score


def test_images_similar_to_an_outside_embedding_equal_a_brute_force_ranking():
    rng = np.random.default_rng(3)
    embeddings = rng.standard_normal((40, 16)).astype(np.float32)
    view = DatasetView("d", 1, np.arange(500, 540), [f"x/{i}.png" for i in range(40)], [None] * 40,
                       [(8, 8)] * 40, embeddings)
    query = rng.standard_normal(16).astype(np.float32)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    scores = unit @ (query / np.linalg.norm(query))
    ranking = np.argsort(-scores, kind="stable")[:6]
    results = images_similar_to(view, query, 6)
    assert [r.image_id for r in results] == [500 + int(i) for i in ranking]
    assert [r.score for r in results] == pytest.approx(scores[ranking].tolist(), abs=1e-5)
    assert results[0].embedding_head == pytest.approx(embeddings[ranking[0], :8].tolist())
    assert len(images_similar_to(view, query, 100)) == 40  # nothing left out: the query is not in the dataset


def test_the_web_server_does_not_import_torch():
    """Only the job that embeds an upload loads torch and timm: web processes stay small and start fast."""
    script = "import sys, dashboard.app; sys.exit(sorted({'torch', 'timm'} & set(sys.modules)) or 0)"
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"imported by dashboard.app: {result.stderr}"

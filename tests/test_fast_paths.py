"""The indexer's faster paths give what the plain path gives: draft decoding, thumbnails resampled from the
preview, decode workers handing over stacked batches, a model cast to bf16 as a whole, and one with int8 linear
layers."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.bench import write_bench_images
from indexer.decode import PREVIEW_LONG_SIDE, decode_image, thumbnails
from indexer.embed import batch_chunks, embed_files
from indexer.model import WeightsChoice, load_model
from tests.conftest import IMAGE_SIZE, MODEL
from tests.images import EXIF_ORIENTATION, jpeg_bytes


def _trained_like_model():
    """The real architecture with random weights and its layer scales at 1 instead of timm's 1e-5 init, so every
    block changes the tokens (as in trained weights) and rounding in bf16 would show."""
    loaded = load_model(MODEL, WeightsChoice("random"), IMAGE_SIZE)
    for module in loaded.model.modules():
        if hasattr(module, "gamma"):
            module.gamma.data.fill_(1.0)
    return loaded


def _plain_path(loaded, rgb: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """One picture through the model alone, in float32, in the main process: the CLS token and the patch tokens."""
    with torch.inference_mode():
        tokens = loaded.model.forward_features(loaded.transform(rgb).unsqueeze(0))[0]
    return tokens[0].numpy(), tokens[loaded.num_prefix_tokens:].numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float32), b.reshape(-1, b.shape[-1]).astype(np.float32)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Four camera-sized JPEGs and, third in line, a file that cannot be decoded."""
    folder = tmp_path_factory.mktemp("photos")
    paths = write_bench_images(folder, 4)
    broken = folder / "broken.jpg"
    broken.write_bytes(paths[0].read_bytes()[:50_000])
    return [*paths[:2], broken, *paths[2:]]


@pytest.mark.parametrize(("stored", "orientation", "image_size", "decoded"), [
    ((4000, 3000), 1, 224, (1000, 750)),  # 1/4: the preview's 512 along, more than 224 across
    ((4000, 1000), 1, 224, (1000, 250)),  # a panorama: its short side only needs the model input
    ((1000, 4000), 1, 224, (250, 1000)),  # portrait
    ((4000, 1000), 6, 224, (250, 1000)),  # stored landscape, displayed portrait: the same decode, turned
    ((4120, 4120), 1, 224, (515, 515)),  # 1/8
    ((4120, 4120), 1, 518, (1030, 1030)),  # 1/8 would be 515: less than a model input of 518
    ((300, 200), 1, 224, (300, 200)),  # small pictures decode whole
])
def test_jpegs_decode_at_the_least_scale_covering_preview_and_model_input(stored, orientation, image_size, decoded):
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    picture = decode_image(jpeg_bytes(Image.new("RGB", stored, (90, 120, 30)), exif=exif.tobytes()), image_size)
    assert picture.rgb.size == decoded
    assert max(picture.rgb.size) >= max(PREVIEW_LONG_SIDE, image_size) or picture.rgb.size == stored
    assert min(picture.rgb.size) >= image_size or picture.rgb.size == stored


def test_draft_decoding_resamples_the_same_picture_and_keeps_the_thumbnail_sizes(photos):
    loaded = load_model(MODEL, WeightsChoice("random"), 224)
    for path in (photos[0], photos[1], photos[3]):
        data = path.read_bytes()
        full = Image.open(io.BytesIO(data)).convert("RGB")
        draft = decode_image(data, 224)
        assert max(draft.rgb.size) < max(full.size)  # it did decode reduced
        grey_levels = (loaded.transform(draft.rgb) - loaded.transform(full)).abs() * 0.226 * 255
        assert grey_levels.mean() < 5, path.name  # resampling differences, not another picture
        from_draft, from_full = thumbnails(draft.rgb, (draft.width, draft.height)), thumbnails(full)
        for kind in ("gallery", "preview"):
            assert (from_draft[kind].width, from_draft[kind].height) == (from_full[kind].width, from_full[kind].height)
            pixels = [np.asarray(Image.open(io.BytesIO(made[kind].jpeg)), np.float32)
                      for made in (from_draft, from_full)]
            assert np.abs(pixels[0] - pixels[1]).mean() < 8, (path.name, kind)


@pytest.mark.parametrize(("precision", "cls_cosine", "patch_cosine"), [("fp32", 0.99999, 0.9999),
                                                                       ("bf16", 0.999, 0.999),
                                                                       ("int8", 0.995, 0.995)])  # 0.998 measured
def test_workers_batches_and_precision_give_the_plain_paths_embeddings(photos, precision, cls_cosine, patch_cosine):
    plain = _trained_like_model()
    fast = _trained_like_model()
    batches = list(embed_files(photos, fast, torch.device("cpu"), precision, batch_size=3, workers=2))
    assert [len(batch) for batch in batches] == [3, 2]
    results = [result for batch in batches for result in batch]
    assert [result.index for result in results] == list(range(len(photos)))
    assert results[2].content is None and "damaged or truncated" in results[2].failure

    for path, result in zip(photos, results):
        if result.content is None:
            continue
        decoded = decode_image(path.read_bytes(), IMAGE_SIZE)
        cls, patches = _plain_path(plain, decoded.rgb)
        assert result.content.embedding.dtype == np.float32 and result.content.patch_grid.dtype == np.float16
        assert result.content.patch_grid.shape == (IMAGE_SIZE // 14, IMAGE_SIZE // 14, plain.embed_dim)
        assert _cosines(result.content.embedding, cls).min() > cls_cosine
        assert _cosines(result.content.patch_grid, patches).min() > patch_cosine
        assert result.content.thumbnails == thumbnails(decoded.rgb, (decoded.width, decoded.height))
        assert (result.content.width, result.content.height) == Image.open(path).size


def test_every_decode_worker_takes_a_share_of_each_batch_in_order():
    assert batch_chunks(35, 16, 2) == [[range(8), range(8, 16)], [range(16, 24), range(24, 32)],
                                       [range(32, 33), range(33, 35)]]
    assert batch_chunks(3, 16, 8) == [[range(1), range(1, 2), range(2, 3)]]  # never an empty chunk
    assert batch_chunks(4, 2, 0) == [[range(2)], [range(2, 4)]]  # decoding in the main process


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_with_pinned_batches_gives_the_cpu_embeddings(photos, precision):
    on_cpu = [result for batch in embed_files(photos, _trained_like_model(), torch.device("cpu"), "fp32", 3, 1)
              for result in batch]
    on_cuda = [result for batch in embed_files(photos, _trained_like_model(), torch.device("cuda"), precision, 3, 1)
               for result in batch]
    for cpu_result, cuda_result in zip(on_cpu, on_cuda):
        if cpu_result.content is not None:
            assert _cosines(cpu_result.content.embedding, cuda_result.content.embedding).min() > 0.999

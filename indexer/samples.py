"""The offline sample set: 44 real photographs in six labels of seven or eight.

Most ship inside this package (`indexer/sample_photos/<label>/`, public domain or CC0, sources in its LICENCES.md);
three come from scikit-image and scikit-learn. All are copied byte for byte, so no network is needed and nothing is
re-encoded.
"""

from __future__ import annotations

import shutil
from pathlib import Path

PHOTOS = Path(__file__).parent / "sample_photos"
# label -> files from scikit-image's data folder
_SKIMAGE = {"animals": ["chelsea.png"], "kitchen": ["coffee.png"]}
# label -> files from scikit-learn's sample images
_SKLEARN = {"buildings": ["china.jpg"]}


def sample_sources() -> dict[str, list[Path]]:
    """The sample photographs on this machine, by label, each label's files sorted by name."""
    import skimage.data
    import sklearn.datasets

    roots = {
        "skimage": Path(skimage.data.__file__).parent,
        "sklearn": Path(sklearn.datasets.__file__).parent / "images",
    }
    sources: dict[str, list[Path]] = {
        folder.name: [path for path in folder.iterdir() if path.is_file()]
        for folder in sorted(PHOTOS.iterdir()) if folder.is_dir()
    }
    for library, table in (("skimage", _SKIMAGE), ("sklearn", _SKLEARN)):
        for label, names in table.items():
            sources[label].extend(roots[library] / name for name in names)
    return {label: sorted(files, key=lambda path: path.name) for label, files in sources.items()}


def copy_samples(target: Path) -> list[Path]:
    """Copy the sample set into `target/<label>/<file>`; existing identical files are left alone."""
    copied = []
    for label, files in sample_sources().items():
        (target / label).mkdir(parents=True, exist_ok=True)
        for source in files:
            destination = target / label / source.name
            if not destination.exists() or destination.read_bytes() != source.read_bytes():
                shutil.copyfile(source, destination)
            copied.append(destination)
    return copied

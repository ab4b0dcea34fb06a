"""The offline sample set: real photographs that ship inside scikit-image and scikit-learn, sorted into labels.

Copied byte for byte, so no network is needed and nothing is re-encoded.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# label -> files from scikit-image's data folder
_SKIMAGE = {
    "animals": ["chelsea.png"],
    "people": ["astronaut.png", "camera.png"],
    "vehicles": ["rocket.jpg", "motorcycle_left.png", "motorcycle_right.png"],
    "objects": ["coffee.png", "coins.png", "clock_motion.png"],
    "textures": ["brick.png", "grass.png", "gravel.png"],
    "space": ["hubble_deep_field.jpg", "moon.png"],
    "microscopy": ["cell.png", "ihc.png", "retina.jpg", "microaneurysms.png"],
    "documents": ["page.png", "text.png"],
}
# label -> files from scikit-learn's sample images
_SKLEARN = {"scenes": ["china.jpg", "flower.jpg"]}


def sample_sources() -> dict[str, list[Path]]:
    """The sample photographs on this machine, by label."""
    import skimage.data
    import sklearn.datasets

    roots = {
        "skimage": Path(skimage.data.__file__).parent,
        "sklearn": Path(sklearn.datasets.__file__).parent / "images",
    }
    sources: dict[str, list[Path]] = {}
    for library, table in (("skimage", _SKIMAGE), ("sklearn", _SKLEARN)):
        for label, names in table.items():
            sources.setdefault(label, []).extend(roots[library] / name for name in names)
    return sources


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

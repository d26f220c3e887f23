"""The ``photos`` protocol: real photographs shipped inside scikit-image's wheel; no targets.

Only files present in the installed package are used (``skimage/data/*``), never the ones scikit-image
fetches on demand, so the protocol works offline. Each pair's ``inputs`` is a digest of the two files' bytes, so a
scikit-image release that changes a picture regenerates its pairs.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from PIL import Image

from sxbench.imageio import fit, load_image
from sxbench.interfaces import PairSpec, Protocol, ProtocolSpec
from sxbench.records import file_sha256, stable_hash

CONTENTS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png")
STYLES = ("brick.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "color.png")
METRICS = ("content_ssim", "content_edge_f1", "style_color_swd", "style_gram",
           # pretrained backbones (`sxbench weights fetch default`); "not run" where the weights are missing
           "dino_content", "dino_structure", "vgg_content_loss", "vgg_gram_style", "stlpips_content", "fid", "kid", "artfid_st")


NEAR_DUPLICATES = {"motorcycle_right.png": "motorcycle_left.png"}
"""Bundled pictures of the same scene as an evaluated one (a stereo pair): kept out of training like it."""


def data_dir() -> Path:
    """Folder of scikit-image's bundled sample images."""
    import skimage

    return Path(skimage.__file__).parent / "data"


def evaluation_files() -> list[Path]:
    """The bundled files this protocol evaluates on (contents and styles)."""
    return [data_dir() / n for n in CONTENTS + STYLES]


def is_evaluation_photo(path: Path) -> bool:
    """Whether a file is one this protocol evaluates on: by name, as a near-duplicate of one, or by its bytes'
    sha256 (a renamed copy). Trained methods leave these out of their training data."""
    if path.name in CONTENTS + STYLES or path.name in NEAR_DUPLICATES:
        return True
    return file_sha256(path) in _evaluation_sha256()


@lru_cache(maxsize=1)
def _evaluation_sha256() -> frozenset[str]:
    return frozenset(file_sha256(p) for p in evaluation_files() if p.is_file())


class PhotosProtocol(Protocol):
    def __init__(self, resolution: int = 256, seeds: tuple[int, ...] = (0,), resize_policy: str = "crop") -> None:
        root = data_dir()
        self._paths = {Path(n).stem: root / n for n in CONTENTS + STYLES}
        missing = [str(p) for p in self._paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"scikit-image sample images missing: {', '.join(missing)}; reinstall scikit-image (pip install "
                "--force-reinstall scikit-image) or use another protocol"
            )
        sha256 = {image_id: file_sha256(path) for image_id, path in self._paths.items()}
        pairs = tuple(
            PairSpec(pair_id=f"{Path(c).stem}__{Path(s).stem}", content_id=Path(c).stem, style_id=Path(s).stem,
                     inputs=stable_hash([sha256[Path(c).stem], sha256[Path(s).stem], ""], 16))
            for c in CONTENTS
            for s in STYLES
        )
        self.input_errors = []
        self.spec = ProtocolSpec(
            name="photos",
            version="1",
            resolution=resolution,
            pairs=pairs,
            seeds=tuple(seeds),
            metrics=METRICS,
            resize_policy=resize_policy,
            description="scikit-image sample photographs as contents, its textures and pictures as styles; no targets.",
            params={"resolution": resolution, "resize_policy": resize_policy, "root": str(root)},
        )
        self._load = lru_cache(maxsize=None)(self._load_uncached)

    def _load_uncached(self, image_id: str) -> Image.Image:
        return fit(load_image(self._paths[image_id]), self.spec.resolution, self.spec.resize_policy)

    def content(self, content_id: str) -> Image.Image:
        return self._load(content_id)

    def style(self, style_id: str) -> Image.Image:
        return self._load(style_id)


def photos(resolution: int = 256, seeds: tuple[int, ...] = (0,), resize_policy: str = "crop") -> PhotosProtocol:
    """6 photographs × 7 style pictures = 42 pairs at 256 × 256."""
    return PhotosProtocol(resolution=resolution, seeds=seeds, resize_policy=resize_policy)

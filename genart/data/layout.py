"""The GenImage folder convention: a path to (generator, split, label).

Tiny GenImage is ``<generator>/<train|val>/<ai|nature>/<file>``. Real copies of it differ in small ways
(``wukon`` vs ``wukong``, upper-case extensions, extra generator folders, a root that *is* one generator
folder), so parsing works on path components alone and never touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

__all__ = [
    "CLASSES",
    "GENIMAGE_GENERATORS",
    "IMAGE_EXTENSIONS",
    "LABEL_AI",
    "LABEL_NATURE",
    "ParsedPath",
    "canonical_generator",
    "label_to_target",
    "parse_path",
]

LABEL_NATURE = "nature"
LABEL_AI = "ai"
#: Class order used everywhere: index 1 is "AI-generated", so a model's ``p[:, 1]`` is P(ai).
CLASSES: tuple[str, str] = (LABEL_NATURE, LABEL_AI)

#: The seven generator folders of Tiny GenImage, in the benchmark's own spelling.
GENIMAGE_GENERATORS: tuple[str, ...] = (
    "imagenet_ai_0419_biggan",
    "imagenet_ai_0419_vqdm",
    "imagenet_ai_0424_sdv5",
    "imagenet_ai_0424_wukon",
    "imagenet_ai_0508_adm",
    "imagenet_glide",
    "imagenet_midjourney",
)

# Spellings seen in copies of the dataset, mapped to the benchmark's folder name.
_GENERATOR_ALIASES = {
    "imagenet_ai_0424_wukong": "imagenet_ai_0424_wukon",
}

_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
_LABELS = {
    "ai": LABEL_AI,
    "fake": LABEL_AI,
    "1_fake": LABEL_AI,
    "nature": LABEL_NATURE,
    "real": LABEL_NATURE,
    "0_real": LABEL_NATURE,
}

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".avif"}
)


@dataclass(frozen=True)
class ParsedPath:
    """Where a file sits in the layout. Any field is ``None`` when the path does not say."""

    generator: str | None
    split: str | None
    label: str | None

    @property
    def complete(self) -> bool:
        return None not in (self.generator, self.split, self.label)


def canonical_generator(name: str) -> str:
    """The benchmark's spelling of a generator folder name; unknown generators pass through unchanged."""
    lowered = name.strip().lower()
    return _GENERATOR_ALIASES.get(lowered, lowered)


def label_to_target(label: str) -> int:
    """The class index of a label (``nature`` -> 0, ``ai`` -> 1)."""
    return CLASSES.index(label)


def parse_path(relpath: str | PurePath, root_name: str | None = None) -> ParsedPath:
    """Parse a file path relative to the dataset root.

    The label is the nearest parent folder named like a label (``ai``/``nature``, also ``fake``/``real``),
    the split the nearest folder above it named like a split, and the generator the folder above that.
    When the root itself is a generator folder (``imagenet_glide/train/ai/x.png`` given as
    ``train/ai/x.png``), pass its name as ``root_name``.
    """
    parts = PurePath(relpath).parts[:-1]
    label_at = _last_index(parts, _LABELS)
    label = _LABELS[parts[label_at].lower()] if label_at is not None else None
    above = parts[:label_at] if label_at is not None else parts
    split_at = _last_index(above, _SPLITS)
    split = _SPLITS[above[split_at].lower()] if split_at is not None else None
    generator_parts = above[:split_at] if split_at is not None else above
    if generator_parts:
        generator = canonical_generator(generator_parts[-1])
    elif root_name and split_at is not None:
        generator = canonical_generator(root_name)
    else:
        generator = None
    return ParsedPath(generator=generator, split=split, label=label)


def _last_index(parts: tuple[str, ...], names: dict[str, str]) -> int | None:
    for i in range(len(parts) - 1, -1, -1):
        if parts[i].lower() in names:
            return i
    return None

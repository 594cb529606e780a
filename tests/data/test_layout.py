import pytest

from genart.data.layout import (
    CLASSES,
    GENIMAGE_GENERATORS,
    ParsedPath,
    canonical_generator,
    label_to_target,
    parse_path,
)


@pytest.mark.parametrize("generator", GENIMAGE_GENERATORS)
@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("label", ["ai", "nature"])
def test_parse_path_reads_every_genimage_folder(generator: str, split: str, label: str) -> None:
    assert parse_path(f"{generator}/{split}/{label}/n01440764_10026.JPEG") == ParsedPath(
        generator, split, label
    )


@pytest.mark.parametrize(
    ("relpath", "expected"),
    [
        ("imagenet_ai_0424_wukong/train/ai/x.png", ("imagenet_ai_0424_wukon", "train", "ai")),
        ("IMAGENET_GLIDE/Train/AI/X.PNG", ("imagenet_glide", "train", "ai")),
        ("my_new_generator/val/nature/a b ü.jpg", ("my_new_generator", "val", "nature")),
        ("tiny-genimage/imagenet_midjourney/train/nature/x.jpg", ("imagenet_midjourney", "train", "nature")),
        ("gen/validation/fake/x.png", ("gen", "val", "ai")),
        ("gen/test/0_real/x.png", ("gen", "test", "nature")),
        ("gen/train/ai/nested/deeper/x.png", ("gen", "train", "ai")),
        ("README.md", (None, None, None)),
        ("gen/ai/x.png", ("gen", None, "ai")),
        ("ai/x.png", (None, None, "ai")),
    ],
)
def test_parse_path_tolerates_real_world_oddities(relpath: str, expected: tuple) -> None:
    assert parse_path(relpath) == ParsedPath(*expected)


def test_parse_path_uses_root_name_when_root_is_a_generator_folder() -> None:
    assert parse_path("train/ai/x.png", root_name="imagenet_glide") == ParsedPath(
        "imagenet_glide", "train", "ai"
    )
    assert not parse_path("train/ai/x.png").complete


def test_canonical_generator_and_targets() -> None:
    assert canonical_generator(" Imagenet_AI_0424_Wukong ") == "imagenet_ai_0424_wukon"
    assert canonical_generator("something_else") == "something_else"
    assert CLASSES == ("nature", "ai")
    assert label_to_target("ai") == 1 and label_to_target("nature") == 0

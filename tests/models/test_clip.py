"""The frozen CLIP encoder (the real INT8 ONNX graph, fetched by `make weights`), its head and artefact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from genart.models.clip import (
    CLIP_SPEC,
    ClipDetector,
    ClipEncoder,
    ClipHead,
    EncoderUnavailable,
    _u8s8_probe,
    encoder_from_meta,
    locate_clip_onnx,
    split_int8_weights,
    tapped_graph,
    u8s8_is_exact,
)
from genart.train.head import fit_head


@pytest.fixture(scope="module")
def encoder():
    return ClipEncoder(taps=(6, 12))


def test_missing_encoder_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GENART_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.delenv("GENART_CLIP_ONNX", raising=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(EncoderUnavailable, match="genart weights clip"):
        locate_clip_onnx()


def test_wrong_file_is_refused(tmp_path):
    fake = tmp_path / "clip.onnx"
    fake.write_bytes(b"not a model")
    with pytest.raises(EncoderUnavailable, match="sha256"):
        locate_clip_onnx(fake)


def test_taps_are_class_tokens_of_blocks(encoder):
    assert encoder.dim == 2 * 768
    with pytest.raises(ValueError, match=r"blocks 1\.\.12"):
        tapped_graph(encoder.path, [13])


def test_features_do_not_depend_on_the_batch(encoder):
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(3, 3, 224, 224)).astype(np.float32)
    together = encoder.features(pixels)
    alone = np.concatenate([encoder.features(p[None]) for p in pixels])
    assert together.shape == (3, 1536)
    np.testing.assert_array_equal(together, alone)
    assert np.abs(together[0] - together[1]).max() > 1e-3  # different images, different features


def test_served_uint8_pixels_give_the_evaluated_features_bit_for_bit(encoder):
    """Serving hands the model uint8 images that it normalises (``transforms.normalize``); evaluation and
    the feature cache use the float eval transform. This encoder quantises its activations on the fly, so
    inputs 2e-7 apart give features as far apart as an image and its JPEG q96 re-save: they must be equal."""
    from genart.data.transforms import decode_image, eval_transform, normalize
    from tests.conftest import image_bytes

    image = decode_image(image_bytes((300, 200), seed=4, fmt="JPEG"), [CLIP_SPEC])
    evaluated = eval_transform(CLIP_SPEC)(image)[None]
    served = normalize(eval_transform(CLIP_SPEC, as_uint8=True)(image)[None], CLIP_SPEC)
    np.testing.assert_array_equal(encoder.features(served), encoder.features(evaluated))
    nudged = encoder.features(evaluated + 2e-7 * torch.randn(evaluated.shape, generator=torch.manual_seed(0)))
    assert np.abs(nudged - encoder.features(evaluated)).max() > 1e-3  # why: the encoder is that sensitive


def test_head_reproduces_the_regression_and_survives_a_round_trip(encoder):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(80, encoder.dim)).astype(np.float32)
    y = (x[:, 0] + 0.1 * rng.normal(size=80) > 0).astype(int)
    head = fit_head(x, y, num_classes=2, c=1.0)
    logits = head(torch.from_numpy(x)).detach().numpy()
    assert (logits[:, 0] == 0).all()
    assert ((logits[:, 1] > 0).astype(int) == y).mean() > 0.9
    detector = ClipDetector(encoder, head)
    restored = ClipDetector(encoder, ClipHead(encoder.dim, 2))
    restored.load_state_dict(detector.state_dict())
    assert set(detector.state_dict()) == {"head.mean", "head.scale", "head.linear.weight", "head.linear.bias"}
    images = torch.randn(2, 3, CLIP_SPEC.input_size, CLIP_SPEC.input_size)
    torch.testing.assert_close(detector(images), restored(images))


def test_split_int8_weights_give_exact_products_on_any_cpu():
    """The probe's 255 x 127 pairs saturate a 16-bit pair sum (AVX2 without VNNI); split, they cannot."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    graph, activations, weight = _u8s8_probe()
    model = onnx.load_from_string(graph)
    assert split_int8_weights(model) == 1
    halves = [
        numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.INT8
    ]
    assert len(halves) == 2 and all(np.abs(h).max() <= 64 for h in halves)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    exact = activations.astype(np.int64) @ weight.astype(np.int64)
    assert exact.max() > 2 * 32767  # why: a 16-bit lane would saturate on these sums
    np.testing.assert_array_equal(session.run(None, {"a": activations})[0], exact)


def test_split_encoder_gives_the_exact_features_where_this_cpu_is_exact():
    """Features are the same integers whichever way they are computed, where the CPU multiplies exactly;
    on a saturating CPU the unsplit graph's features differ and the encoder splits by default."""
    pixels = np.random.default_rng(2).normal(size=(2, 3, 224, 224)).astype(np.float32)
    split = ClipEncoder(taps=(6,), split_int8=True).features(pixels)
    unsplit = ClipEncoder(taps=(6,), split_int8=False).features(pixels)
    assert ClipEncoder(taps=(6,)).split_int8 is not u8s8_is_exact()
    if u8s8_is_exact():
        np.testing.assert_array_equal(split, unsplit)
    else:
        assert not np.array_equal(split, unsplit)


def test_artefact_from_before_exact_int8_is_refused(encoder):
    described = encoder.describe()
    assert encoder_from_meta(described).taps == encoder.taps
    with pytest.raises(EncoderUnavailable, match="train it again"):
        encoder_from_meta({k: v for k, v in described.items() if k != "int8"})

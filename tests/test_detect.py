"""Family detection of diffusers folders (used by the loader node and ``anti-i2v protect --surrogate auto``)."""

import json

import pytest

from anti_i2v.surrogates import FAMILIES, SurrogateError, save_tiny
from anti_i2v.surrogates.detect import detect_family


@pytest.mark.parametrize("family", list(FAMILIES))
def test_tiny_folders_are_detected(tmp_path, family):
    assert detect_family(save_tiny(family, tmp_path / family)) == family


def _folder(tmp_path, index=None, transformer=None):
    d = tmp_path / "m"
    (d / "transformer").mkdir(parents=True)
    if index:
        (d / "model_index.json").write_text(json.dumps({"_class_name": index}))
    if transformer:
        (d / "transformer" / "config.json").write_text(json.dumps(transformer))
    return d


@pytest.mark.parametrize(
    "index, transformer, match",
    [
        ("StableDiffusionPipeline", None, "not an image-to-video model"),
        (None, {"_class_name": "CogVideoXTransformer3DModel", "in_channels": 16}, "text-to-video CogVideoX"),
        (None, {"_class_name": "WanTransformer3DModel", "in_channels": 16}, "text-to-video Wan"),
        (None, None, "cannot tell which I2V family"),
    ],
)
def test_unsupported_folders_are_named(tmp_path, index, transformer, match):
    with pytest.raises(SurrogateError, match=match):
        detect_family(_folder(tmp_path, index, transformer))


def test_i2v_transformer_config_alone(tmp_path):
    d = _folder(tmp_path, None, {"_class_name": "CogVideoXTransformer3DModel", "in_channels": 32})
    assert detect_family(d) == "cogvideox"


@pytest.mark.parametrize("text, why", [("{not json", "not valid JSON"), ("[1, 2]", "a JSON list, not an object")])
def test_invalid_model_index_is_called_unreadable(tmp_path, text, why):
    d = _folder(tmp_path)
    (d / "model_index.json").write_text(text)
    with pytest.raises(SurrogateError, match="cannot tell") as err:
        detect_family(d)
    msg = str(err.value)
    assert f"model_index.json is unreadable ({why}" in msg and "no model_index.json" not in msg


def test_unreadable_transformer_config_is_named_next_to_a_valid_index(tmp_path):
    d = _folder(tmp_path, index="StableDiffusionPipeline")
    (d / "transformer" / "config.json").write_text("{oops")
    with pytest.raises(SurrogateError, match="not an image-to-video model") as err:
        detect_family(d)
    assert "StableDiffusionPipeline; transformer/config.json is unreadable (not valid JSON" in str(err.value)

import struct

import pytest

from hisd_edge.convert import calib_cache
from hisd_edge.errors import BundleError, InputError


@pytest.mark.parametrize(
    "version, tag",
    [("8.5.2", 8502), ("8.6.1", 8601), ("8.2.3", 8203), ("10.3.0", 100300), ("10.16.2", 101602), ("11.1", 110100)],
)
def test_version_tag_follows_tensorrt_numbering(version, tag):
    assert calib_cache.version_tag(version) == tag


def test_scale_is_big_endian_float32_hex():
    assert calib_cache.scale_hex(1.0) == "3f800000"
    assert calib_cache.scale_hex(0.5) == "3f000000"
    value = 0.0123
    assert calib_cache.scale_hex(value) == struct.pack(">f", value).hex()
    assert calib_cache.hex_scale(calib_cache.scale_hex(value)) == pytest.approx(value, rel=1e-7)


def test_format_parse_round_trip():
    amax = {"input": 2.8215, "feat0": 5.0, "/stage/Conv_output_0": 0.25, "onnx::Conv_254": 1.5, "dead": 0.0}
    text = calib_cache.format_cache(amax, "10.3.0")
    lines = text.splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    assert lines[2] == "feat0: " + struct.pack(">f", 5.0 / 127).hex()
    tag, algorithm, scales = calib_cache.parse_cache(text)
    assert (tag, algorithm) == (100300, "EntropyCalibration2")
    assert list(scales) == list(amax)
    for name, value in amax.items():
        expected = value / 127 if value else 1.0  # an all-zero tensor gets scale 1, as ONNX Runtime does
        assert scales[name] == pytest.approx(expected, rel=1e-6)


def test_retarget_rewrites_only_the_header():
    text = calib_cache.format_cache({"a": 1.0, "b": 2.0}, "8.5.2")
    moved = calib_cache.retarget(text, "10.3.0", "MinMaxCalibration")
    assert moved.splitlines()[0] == "TRT-100300-MinMaxCalibration"
    assert moved.splitlines()[1:] == text.splitlines()[1:]


def test_bad_input_is_reported():
    with pytest.raises(BundleError):
        calib_cache.parse_cache("not a cache\n")
    with pytest.raises(BundleError):
        calib_cache.parse_cache("TRT-8502-EntropyCalibration2\nfeat0 3c010a14\n")
    with pytest.raises(InputError):
        calib_cache.format_cache({"a": 1.0}, algorithm="Bogus")
    with pytest.raises(InputError):
        calib_cache.format_cache({"bad\nname": 1.0})
    with pytest.raises(InputError):
        calib_cache.version_tag("latest")


def test_module_needs_only_the_standard_library():
    import subprocess
    import sys

    code = (
        "import sys; import hisd_edge.convert.calib_cache; "
        "print(any(m in sys.modules for m in ('numpy', 'onnx', 'torch', 'onnxruntime')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"

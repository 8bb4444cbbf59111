"""tools/render_report.py: the report rendered by headless Chromium, as a user's browser shows it."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("render_report", ROOT / "tools" / "render_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
    reason="needs Chromium (apt-get install chromium)",
)
def test_the_report_renders_with_its_headline_box(tmp_path):
    from PIL import Image

    from hisd_edge.profile.report import write_report
    from tests.profile.test_report_tradeoff import make_profile

    profile = make_profile(energy=False)
    profile["headline"] = {
        "available": True,
        "speedup": 2.5,
        "speedup_range": [2.4, 2.6],
        "mean_latency_ms": 0.4,
        "full_mean_latency_ms": 1.0,
        "exit_fractions": [0.9, 0.05, 0.05],
        "samples": 100,
        "passes": 5,
        "data": "default:test",
        "certificate": {},
        "bench_command": "hisd-edge bench engines/x --data default:test",
    }
    write_report(profile, tmp_path / "r")
    png = _tool().render(tmp_path / "r" / "report.html", tmp_path / "shot.png", width=1000, height=900)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    assert pixels.shape == (900, 1000, 3)
    # the headline box's background (#edf2ff) is on screen near the top, under the title
    box = np.all(pixels[:400] == (0xED, 0xF2, 0xFF), axis=-1)
    assert box.sum() > 20000, "no headline box in the top of the rendered page"


def test_missing_report_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="no such report"):
        _tool().render(tmp_path / "nowhere.html", tmp_path / "x.png")

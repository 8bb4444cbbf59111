import subprocess
import sys

import pytest

from hisd_edge.cli import VERBS, _available_verbs, main


def test_top_level_help_lists_verbs(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for verb in _available_verbs():
        assert verb in out


def test_every_verb_is_there():
    # _available_verbs() quietly leaves out a verb whose module is missing; this tree ships them all.
    assert _available_verbs() == VERBS


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert "usage: hisd-edge " + verb in capsys.readouterr().out


def test_help_imports_no_torch():
    code = "import sys; from hisd_edge.cli import build_parser; build_parser(); print('torch' in sys.modules, 'onnx_graphsurgeon' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False False"


def test_unknown_verb_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2

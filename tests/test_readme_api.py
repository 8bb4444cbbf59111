"""The README's Python API section runs as written (issue 13)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippets():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_python_api_section_runs(tmp_path, monkeypatch, capsys):
    snippets = _snippets()
    assert len(snippets) >= 4, "the README's Python API section lost its snippets"
    monkeypatch.chdir(tmp_path)  # the snippets write engines/ and digit.png relative to the current directory
    scope: dict = {}
    for snippet in snippets:
        exec(compile(snippet, str(README), "exec"), scope)
    out = capsys.readouterr().out
    assert (tmp_path / "engines" / "mnist" / "manifest.json").is_file()
    assert "certified" in out or "fitted empirically" in out
    assert "digit.png" in out and "speedup" in out

"""The README's library example runs as written."""

import re
from pathlib import Path


def test_readme_library_example_runs(tmp_path, monkeypatch, mnist):
    text = (Path(__file__).parent.parent / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "example" / "weights.safetensors").is_file()

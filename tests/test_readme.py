"""The README's Python tour runs as written (every ```python block, in order, in one namespace)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)                 # the tour writes run.npz
    namespace: dict = {}
    exec(compile("\n".join(blocks), str(README), "exec"), namespace)
    assert (tmp_path / "run.npz").is_file()
    facing, zero = namespace["facing"], namespace["zero"]
    assert namespace["tf"].cost(zero, facing) < 1e-20

"""The README's library example runs as printed and answers the question."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_library_example_runs(tmp_path: Path):
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Library", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    script = tmp_path / "example.py"
    script.write_text(code.group(1))
    result = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "user:  What is the capital of France?" in result.stdout
    assert re.search(r"agent: .*Paris.*\(\d+\.\d ms\)", result.stdout), result.stdout
    # the typed question, answered through the tool
    assert "user:  What is the time right now?" in result.stdout
    assert re.search(r"tool:  get_time -> \d\d:\d\d", result.stdout), result.stdout
    assert len(re.findall(r"^agent: ", result.stdout, re.M)) == 2, result.stdout


def test_readme_names_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in quick.strip().splitlines()]
    assert commands == ["bin/voicecore serve --dev", "bin/test"]
    assert "bin/voicecore talk examples/what-is-the-capital-of-france.wav" in readme
    assert "bin/test" in (ROOT / ".ci" / "run").read_text()

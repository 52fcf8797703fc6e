"""README opens with the two set-up commands, and CI runs exactly the second one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)][:2]


def test_readme_opens_with_demo_and_test_commands():
    demo, tests = readme_commands()
    assert demo.endswith("alignkit demo") and "torch==2.13.0" in demo
    # the suite, then the vLLM rollout-engine tests in their own environment
    assert tests.endswith("python -m pytest -q && bash scripts/test_vllm.sh")
    assert "torch==2.13.0" in tests
    head = (ROOT / "README.md").read_text().split("```")[0]
    assert head.count("\n") < 6  # the commands come first, before any tour


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == readme_commands()[1]

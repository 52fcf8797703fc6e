"""The dependency rule of docs/ARCHITECTURE.md, checked by import-linter (the contracts in
pyproject.toml), and what that rule implies for the tree: recipes are leaves that nothing but the
CLI and the demo pipeline imports, trainer recipes stay short, and comments point at files that
exist."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "alignkit"


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py")
                  if "__pycache__" not in p.parts)


def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe, "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # every contract ran and was kept (a contract silently dropped from pyproject would pass)
    assert re.search(r"Contracts: 3 kept, 0 broken", proc.stdout), proc.stdout[-2000:]


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_only_the_cli_and_the_pipelines_import_recipes():
    # the pipelines (the demo, the over-optimisation study) drive the stage recipes by config
    allowed = {SRC / "cli.py", SRC / "recipes" / "demo.py", SRC / "recipes" / "study.py"}
    offenders = [str(p.relative_to(ROOT)) for p in python_files("src", "tests", "bench")
                 if p not in allowed and any(m == "alignkit.recipes" or
                                             m.startswith("alignkit.recipes.")
                                             for m in imported_modules(p))]
    assert offenders == []


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "online_dpo", "ppo"])
def test_trainer_recipes_read_top_to_bottom_in_numbered_steps(stage):
    tree = ast.parse((SRC / "recipes" / f"{stage}.py").read_text(encoding="utf-8"))
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    assert main.end_lineno - main.lineno + 1 <= 85
    source = ast.get_source_segment((SRC / "recipes" / f"{stage}.py").read_text(), main)
    steps = [int(n) for n in re.findall(r"^\s*# (\d+)\. ", source, flags=re.M)]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 4


def test_no_trainer_loop_outside_the_engine():
    """The optimiser, its schedule and the checkpoint writer are built in one place."""
    owners = {}
    for path in python_files("src"):
        text = path.read_text(encoding="utf-8")
        for needle in ("torch.optim.AdamW(", "get_scheduler(", "save_checkpoint(",
                       "clip_grad_norm_("):
            if needle in text:
                owners.setdefault(needle, []).append(str(path.relative_to(SRC)))
    assert owners["torch.optim.AdamW("] == ["training/engine.py"]
    assert owners["get_scheduler("] == ["training/engine.py"]
    assert owners["clip_grad_norm_("] == ["training/engine.py"]
    assert set(owners["save_checkpoint("]) == {"training/engine.py", "models/checkpoint.py"}


PATH_IN_COMMENT = re.compile(r"(?<![\w/.-])((?:docs|bench|tests|src|\.ci)/[\w./-]+\.(?:md|py|"
                             r"yaml|jsonl|json|html|toml)\b|README\.md|DESIGN\.md)")


def comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every comment and docstring of a Python file."""
    import io
    import tokenize

    source = path.read_text(encoding="utf-8")
    out = [(tok.start[0], tok.string) for tok in
           tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc and node.body:
                out.append((node.body[0].lineno, doc))
    return out


def test_every_file_a_comment_or_docstring_names_exists():
    missing = []
    for path in python_files("src", "tests", "bench"):
        for lineno, text in comments_and_docstrings(path):
            for name in PATH_IN_COMMENT.findall(text):
                if not (ROOT / name).exists():
                    missing.append(f"{path.relative_to(ROOT)}:{lineno}: {name}")
    assert missing == []

"""Issue 18's end states, checked on the source: the page's module stays layout and wiring, imports point one way."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def test_the_page_module_is_layout_and_wiring_and_nothing_imports_it():
    ui = ROOT / "serdemo" / "ui.py"
    assert len(ui.read_text().splitlines()) <= 350
    assert not {m for m in imports_of(ui) if m == "torch" or m.startswith("torch.")}
    for path in list((ROOT / "serdemo").rglob("*.py")) + list((ROOT / "training").rglob("*.py")):
        if path != ui:
            assert not {m for m in imports_of(path) if m in ("serdemo.ui", "serdemo.ui.build_app")}, path


def test_serdemo_never_imports_training_and_the_second_trainer_is_gone():
    for path in (ROOT / "serdemo").rglob("*.py"):
        assert not {m for m in imports_of(path) if m == "training" or m.startswith("training.")}, path
    assert not (ROOT / "training" / "ablate.py").exists()

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


def module_graph() -> dict[str, set[str]]:
    """serdemo/, training/ and app.py: each module -> the project modules it imports, at any depth (an import
    inside a function is still a dependency, so a cycle cannot hide in one)."""
    mods = {}
    for pkg in ("serdemo", "training"):
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    mods["app"] = ROOT / "app.py"
    graph = {}
    for name, path in mods.items():
        deps = set()
        for m in imports_of(path):
            while m and m not in mods:
                m = m.rpartition(".")[0]
            if m and m != name and not name.startswith(m + "."):  # a package's own __init__ is not a cycle
                deps.add(m)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_even_through_imports_inside_functions():
    graph = module_graph()
    assert graph["training.fit"] and "serdemo.encoders" in graph["serdemo.inference"]  # the walk sees imports
    assert cycles(graph) == []
    # and the walk can fail: the cycle the calibration command once closed (calibration -> fit -> calibration)
    assert cycles(dict(graph, **{"training.calibration": graph["training.calibration"] | {"training.fit"}}))


def test_no_module_imports_another_modules_private_name():
    for path in list((ROOT / "serdemo").rglob("*.py")) + list((ROOT / "training").rglob("*.py")) + [ROOT / "app.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("serdemo", "training"):
                assert not [a.name for a in node.names if a.name.startswith("_")], (path, node.module)


def test_only_the_encoder_package_knows_an_encoders_insides():
    """Width, depth and weights belong to serdemo/encoders: everything else asks the registry or the loaded
    encoder's ``info`` (so adding an encoder is its own file and one registry line)."""
    inside = ROOT / "serdemo" / "encoders"
    for path in list((ROOT / "serdemo").rglob("*.py")) + list((ROOT / "training").rglob("*.py")) + [ROOT / "app.py"]:
        if inside in path.parents:
            continue
        deep = {m for m in imports_of(path) if m.startswith("serdemo.encoders.") and
                m.split(".")[2] not in ("base", "EncoderError", "EncoderInfo", "SpeechEncoder", "cpu_bf16_default",
                                        "DEFAULT", "REGISTRY", "info", "load", "name_of")}
        assert not deep, (path, deep)
        text = path.read_text()
        for name in ("D_MODEL", "N_LAYERS", "serdemo.whisper"):
            assert name not in text, (path, name)

"""The package reads top-down: core never imports gradio, shared contracts never import a capability package,
and no module imports a package above it."""
from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO

PACKAGE = REPO / "workbench"
SHARED = {"config", "runs", "paths", "models", "formatting", "safety"}
CAPABILITIES = {"data", "training", "evaluation", "chat", "deploy"}


def core_modules() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if len(parts) > 1 and parts[1] in ("ui", "__main__"):  # __main__ runs the CLI when imported
            continue
        out.append(".".join(parts))
    return out


def test_every_core_module_imports_with_gradio_blocked():
    """Each core module is imported in a fresh interpreter where `import gradio` fails."""
    code = ("import sys, importlib\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'gradio' or name.startswith('gradio.'):\n"
            "            raise ImportError('gradio is blocked: core must not import it')\n"
            "sys.meta_path.insert(0, Block())\n"
            "failed = []\n"
            "for m in sys.argv[1:]:\n"
            "    try:\n"
            "        importlib.import_module(m)\n"
            "    except Exception as e:\n"
            "        failed.append(f'{m}: {e}')\n"
            "print('\\n'.join(failed))\n"
            "sys.exit(1 if failed else 0)\n")
    modules = core_modules()
    assert "workbench.training.recipe" in modules and "workbench.cli" in modules
    proc = subprocess.run([sys.executable, "-c", code, *modules], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]


def imports_of(path) -> set[str]:
    """workbench.* modules a file imports (at any depth: lazy imports inside functions count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("workbench"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("workbench"))
    return found


def test_shared_contracts_import_no_capability_package():
    for name in sorted(SHARED):
        bad = sorted(m for m in imports_of(PACKAGE / f"{name}.py")
                     if len(m.split(".")) > 1 and m.split(".")[1] in CAPABILITIES | {"ui", "commands", "cli"})
        assert not bad, f"workbench/{name}.py imports upward: {bad}"


def test_capability_packages_never_import_the_ui_or_the_cli():
    for cap in sorted(CAPABILITIES):
        for path in sorted((PACKAGE / cap).rglob("*.py")):
            bad = sorted(m for m in imports_of(path) if m.split(".")[1:2] and m.split(".")[1] in {"ui", "commands", "cli"})
            assert not bad, f"{path.relative_to(REPO)} imports upward: {bad}"


def test_capability_packages_import_each_other_without_a_circle():
    """training -> evaluation -> chat, training/evaluation -> data, deploy -> evaluation: a graph with no cycle."""
    edges = {cap: set() for cap in CAPABILITIES}
    for cap in CAPABILITIES:
        for path in (PACKAGE / cap).rglob("*.py"):
            for m in imports_of(path):
                parts = m.split(".")
                if len(parts) > 1 and parts[1] in CAPABILITIES and parts[1] != cap:
                    edges[cap].add(parts[1])
    done, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError(f"import circle: {' -> '.join(stack[stack.index(node):] + [node])}")
        if node not in done:
            stack.append(node)
            for nxt in sorted(edges[node]):
                visit(nxt)
            stack.pop()
            done.add(node)

    for cap in sorted(CAPABILITIES):
        visit(cap)
    assert "chat" not in edges["data"] and not edges["data"]  # data is the bottom capability

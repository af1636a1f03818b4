"""Layering: everything under the panel imports and works with ipywidgets and
IPython made unimportable, and none of it imports them at module top."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import textwrap

import pytest

import nb_trainer

PACKAGE = pathlib.Path(nb_trainer.__file__).parent
FORBIDDEN = ("ipywidgets", "IPython")


def _has_ray() -> bool:
    import importlib.util
    return importlib.util.find_spec("ray") is not None


def headless_modules() -> list[str]:
    """The modules that must not need a notebook: the core, health and its submodules,
    and store / lr_finder once those files exist."""
    names = ["nb_trainer.config", "nb_trainer.data", "nb_trainer.metrics", "nb_trainer.engine",
             "nb_trainer.events", "nb_trainer.run", "nb_trainer.session", "nb_trainer.health",
             "nb_trainer.step", "nb_trainer.tasks", "nb_trainer.wiring", "nb_trainer.callbacks",
             "nb_trainer.optim", "nb_trainer.probes", "nb_trainer.checkpoints", "nb_trainer.steplog",
             "nb_trainer.allocator", "nb_trainer.switches"]
    names += sorted(f"nb_trainer.health.{p.stem}" for p in (PACKAGE / "health").glob("*.py")
                    if p.stem != "__init__")
    names += [f"nb_trainer.{m}" for m in ("store", "lr_finder", "door")
              if (PACKAGE / f"{m}.py").exists() or (PACKAGE / m / "__init__.py").exists()]
    # the sweep layer (its driver module imports Ray Tune, an optional extra)
    names += ["nb_trainer.sweep"] + sorted(f"nb_trainer.sweep.{p.stem}" for p in (PACKAGE / "sweep").glob("*.py")
                                           if p.stem != "__init__" and (p.stem != "driver" or _has_ray()))
    return names + ["nb_trainer"]


def source_files(module: str) -> list[pathlib.Path]:
    rel = module.split(".")[1:]
    if not rel:  # the package itself: its __init__ (ui/ and magics are allowed the notebook)
        return [PACKAGE / "__init__.py"]
    path = PACKAGE.joinpath(*rel)
    if path.is_dir():
        return sorted(path.rglob("*.py"))
    return [path.with_suffix(".py")]


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {forbidden!r}:
                raise ImportError(f"{{name}} is blocked by the layering test")
            return None

    for name in list(sys.modules):
        if name.split(".")[0] in {forbidden!r}:
            del sys.modules[name]
    sys.meta_path.insert(0, Block())
""").format(forbidden=FORBIDDEN)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120)


def test_the_blocker_does_block():
    # the test below means something only if the blocked names really fail to import
    result = run_python("""
        for name in ("ipywidgets", "IPython", "IPython.display"):
            try:
                __import__(name)
            except ImportError:
                continue
            raise SystemExit(f"{name} imported")
    """)
    assert result.returncode == 0, result.stdout + result.stderr


def test_headless_modules_import_and_train_without_ipywidgets_and_ipython():
    modules = headless_modules()
    result = run_python(f"""
        import importlib, sys
        for name in {modules!r}:
            importlib.import_module(name)
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in {FORBIDDEN!r})
        assert not leaked, leaked

        import torch
        import nb_trainer as nbt
        torch.set_num_threads(1)
        torch.manual_seed(0)
        x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
        t = nbt.Trainer(torch.nn.Linear(4, 3), (x, y), (x, y), store=None)
        run = t.start(epochs=2)
        t.wait()
        assert run.status == "finished", (run.status, run.error)
        print("ok", len(run.epochs))
    """)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok 2" in result.stdout


def _top_level_imports(tree: ast.Module) -> list[str]:
    """Names imported when the module is executed (not inside functions or classes)."""
    found = []

    def visit(stmts):
        for node in stmts:
            if isinstance(node, ast.Import):
                found.extend(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append(node.module)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    for child in getattr(node, field, []) or []:
                        visit(child.body if isinstance(child, ast.ExceptHandler) else [child])
    visit(tree.body)
    return found


@pytest.mark.parametrize("module", headless_modules())
def test_source_does_not_import_notebook_packages_at_top_level(module):
    for path in source_files(module):
        imports = _top_level_imports(ast.parse(path.read_text(), str(path)))
        bad = [m for m in imports if m.split(".")[0] in FORBIDDEN]
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {bad} at module top"


def test_the_import_scan_sees_imports_in_if_and_try_blocks():
    tree = ast.parse("import os\nif True:\n    import IPython\ntry:\n    from ipywidgets import Box\n"
                     "except ImportError:\n    import json\ndef f():\n    import IPython.display\n")
    assert _top_level_imports(tree) == ["os", "IPython", "ipywidgets", "json"]


def test_the_callback_base_and_the_task_table_need_no_torch():
    # the store and the renderer process read them; neither may pay torch's import
    code = BLOCKER.replace(repr(FORBIDDEN), repr(("torch",))) + textwrap.dedent("""
        import importlib.util, sys
        for name in ("nb_trainer.tasks", "nb_trainer.callbacks.base", "nb_trainer.callbacks.early_stopping"):
            importlib.import_module(name)
        assert "torch" not in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ok" in result.stdout, result.stdout + result.stderr

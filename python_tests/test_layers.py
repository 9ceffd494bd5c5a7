"""The import rules of docs/ARCHITECTURE.md, checked on the source of every module.

csrc/ <- _native <- ops/ <- methods (clip/, patchnn/, weightspace/, nn/) <- cli, demo, bench.
reference/ is a leaf (torch and the model libraries only); no method imports it; a method
family does not import another family; the shared infrastructure (_files, _cli, _optional,
_progress, runs/) imports neither ops nor methods.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import vision_kernels

ROOT = Path(vision_kernels.__file__).parent
METHODS = {"clip", "patchnn", "weightspace", "nn"}
INFRA = {"_files", "_cli", "_optional", "_progress", "_version", "_build_info", "runs"}
TOP = {"cli", "demo", "bench", "testing"}


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path) -> set[str]:
    """Absolute names of the vision_kernels modules that ``path`` imports (relative imports resolved)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "vision_kernels" or m.startswith("vision_kernels.")}


def _area(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _real_modules(names: set[str], root: Path) -> set[str]:
    # "from . import x" adds both the package and package.x; keep names that are modules or packages
    real = set()
    for name in names:
        relative = Path(*name.split(".")[1:])
        if (root / relative).with_suffix(".py").exists() or (root / relative / "__init__.py").exists():
            real.add(name)
    return real


def _is_command_module(module: str) -> bool:
    leaf = module.rsplit(".", 1)[-1]
    return leaf == "cli" or leaf.endswith("_cli")


def _violations(root: Path = ROOT) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path, root)
        area = _area(module)
        for target in sorted(_real_modules(_imports(path, root), root)):
            other = _area(target)
            if other in ("", area):
                continue
            if area == "reference":
                problems.append(f"{module} (reference is a leaf) imports {target}")
            elif area in INFRA and (other in METHODS or other in TOP or other in ("ops", "reference")):
                problems.append(f"{module} (shared infrastructure) imports {target}")
            elif area == "_native" and other not in ("_version",):
                problems.append(f"{module} (_native) imports {target}")
            elif area == "ops" and other not in INFRA | {"_native"}:
                problems.append(f"{module} (ops) imports {target}")
            elif area in METHODS and other == "cli" and _is_command_module(module):
                continue  # a family's command module may hand over to the top-level parser
            elif area in METHODS and other not in INFRA | {"_native", "ops"}:
                problems.append(f"{module} (method family {area}) imports {target}")
    return problems


def test_import_rules() -> None:
    assert _violations() == []


@pytest.mark.parametrize(
    ("planted", "source", "rule"),
    [
        ("reference/planted.py", "from ..clip.capture import capture\n", "reference is a leaf"),
        ("reference/planted.py", "import vision_kernels.patchnn.gpnn\n", "reference is a leaf"),
        ("patchnn/planted.py", "from ..reference.patch_nn import unfold_patches\n", "method family patchnn"),
        ("clip/planted.py", "from ..weightspace import space\n", "method family clip"),
        ("ops/planted.py", "from ..clip import decompose\n", "(ops)"),
        ("runs/planted.py", "from ..ops import patch_nn\n", "shared infrastructure"),
    ],
)
def test_the_checker_catches_a_violation(tmp_path: Path, planted: str, source: str, rule: str) -> None:
    copy = tmp_path / "vision_kernels"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (copy / planted).write_text(source)
    found = [problem for problem in _violations(copy) if "planted" in problem]
    assert found and all(rule in problem for problem in found), found

"""One name per concept: each class the studio defines has a name of its own in the whole repository (a PNG the
studio received is not the 3D service's `GeneratedImage`, a saved chat message not the LLM's `ChatMessage`, the
client's `ServiceError` not a service's error), and the studio imports no service package: it talks to them over
HTTP and shares only `servicekit.protocol`'s wire-level facts and `servicekit.storage`'s words for a disk that
cannot save (standard library only)."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

from config import ROOT

STUDIO = [ROOT / "app.py", *sorted((ROOT / "studio").glob("*.py"))]
ELSEWHERE = ["config.py", "nim_llm", "nim_trellis", "servicekit", "bench", "scripts", "tests"]
SERVICE_PACKAGES = ("nim_llm", "nim_trellis", "servicekit")
SHARED_WITH_SERVICES = {"servicekit.protocol", "servicekit.storage"}


def python_files(names: list[str]) -> list[Path]:
    paths = [ROOT / n for n in names]
    return [f for p in paths for f in ([p] if p.is_file() else sorted(p.rglob("*.py")))]


def classes(path: Path) -> list[str]:
    return [n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_each_studio_class_has_a_name_of_its_own() -> None:
    studio = Counter(name for path in STUDIO for name in classes(path))
    assert [name for name, count in studio.items() if count > 1] == []
    elsewhere = {name: path for path in python_files(ELSEWHERE) for name in classes(path)}
    assert {name: str(elsewhere[name].relative_to(ROOT)) for name in studio if name in elsewhere} == {}


def test_the_studio_imports_no_service_package() -> None:
    imports = {str(path.relative_to(ROOT)): imported_modules(path) for path in STUDIO}
    foreign = {
        path: sorted(m for m in modules if m.startswith(SERVICE_PACKAGES) and m not in SHARED_WITH_SERVICES)
        for path, modules in imports.items()
    }
    assert {path: modules for path, modules in foreign.items() if modules} == {}

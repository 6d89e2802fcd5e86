"""The service's layers, checked on its source: no import cycle (function-local imports included), Optuna's
tables and private attributes named in one module (service._rdb), the trainer never importing the service."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import grimp
import pytest

from service import _rdb

ROOT = Path(__file__).resolve().parents[2]
OWNER = ROOT / "service" / "_rdb.py"
#: Optuna's private attributes the service reads (through service._rdb's accessors everywhere else).
PRIVATE_ATTRIBUTES = {"_trial_id", "_study_id", "_storage", "_get_filepath", "_create_new_trial", "_get_prepared_new_trial"}
#: Optuna table names too common to match as bare strings ("trials" is also a CLI command): matched in SQL only.
COMMON_NAMES = {"studies", "trials"}
SQL_TABLE = re.compile(rf"\b(?:FROM|JOIN|INTO|UPDATE)\s+({'|'.join(sorted(_rdb.WORKER_PRIVILEGES))})\b")


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("service", "trainer")


def test_no_import_cycle_among_the_service_modules(graph):
    cycles = []
    for module in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                cycles.append(" -> ".join((module, *chain)))
    assert not cycles, "import cycles (function-local imports count too):\n" + "\n".join(sorted(set(cycles)))


def test_the_trainer_never_imports_the_service(graph):
    illegal = [
        f"{importer} -> {imported}"
        for importer in graph.find_children("trainer") | {"trainer"}
        for imported in graph.find_modules_directly_imported_by(importer)
        if imported.split(".")[0] == "service"
    ]
    assert not illegal


def _offences(path: Path) -> list[str]:
    """Where ``path`` names one of Optuna's tables or private attributes, or filters its ExperimentalWarning."""
    found = []
    tree = ast.parse(path.read_text(), str(path))
    exported = {  # __all__ lists names of this module (a function may be called trial_params), not tables
        id(item) for node in ast.walk(tree) if isinstance(node, ast.Assign)
        and any(getattr(target, "id", None) == "__all__" for target in node.targets) for item in ast.walk(node.value)
    }
    for node in ast.walk(tree):
        if id(node) in exported:
            continue
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in set(_rdb.WORKER_PRIVILEGES) - COMMON_NAMES or SQL_TABLE.search(node.value):
                found.append(f"{where}: Optuna's table in {node.value[:60]!r}")
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "table" and node.args:
            name = node.args[0]
            if isinstance(name, ast.Constant) and name.value in _rdb.WORKER_PRIVILEGES:
                found.append(f"{where}: a view of Optuna's table {name.value!r}")
        elif isinstance(node, ast.Attribute):
            if node.attr in PRIVATE_ATTRIBUTES and not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                found.append(f"{where}: Optuna's private attribute {node.attr}")
            elif node.attr == "ExperimentalWarning":
                found.append(f"{where}: a filter of Optuna's ExperimentalWarning (use service._rdb.quiet)")
    return found


def test_optunas_tables_and_private_attributes_appear_in_one_module():
    sources = sorted((ROOT / "service").rglob("*.py")) + sorted((ROOT / "trainer").rglob("*.py"))
    offences = [offence for path in sources if path != OWNER for offence in _offences(path)]
    assert not offences, "outside service/_rdb.py:\n" + "\n".join(offences)
    assert _offences(OWNER), "the check finds nothing even in the owner: it has gone blind"

"""The tests' own layout (tests/README.md): a test module per package module, and
test modules that import helpers, never conftest.py or one another; and the
package as ARCHITECTURE.md's module table lists it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
PACKAGE = TESTS.parent / "gateway"

#: Modules tested in a file of another name; None: nothing to test (no logic).
TESTED_ELSEWHERE: dict[str, str | None] = {
    "__init__": "test_package",  # the public surface, and the wheel
    "__main__": None,  # `python -m gateway` calls cli.main
    "config_loader": "test_config",  # loading is how the settings are tested
    "config_reference": "test_config",  # the README's table
    "exits": "test_drain",  # readers cut on SIGTERM, after their grace
    "stores/__init__": "test_stores",  # the contract, over every store
    "stores/memory": "test_stores",
    "stores/redis": "test_stores",  # and test_redis_store, test_redis_faults
    "stores/redis_calls": "test_redis_faults",  # Redis away: store_unavailable, retries
    "stores/redis_counters": "test_stores",  # the counters' contract
    "stores/redis_follower": "test_redis_followers",
    "stores/redis_generations": "test_redis_store",  # cancel, leases across instances
    "stores/redis_keys": "test_stores",  # through the store
    "stores/redis_pipelining": "test_redis_pipelining",
    "stores/redis_reads": "test_stores",  # and test_redis_faults (a lost generation)
    "stores/redis_scripts": "test_stores",  # through the store and the counters
    "write_behind": "test_generation",  # through the generation, with a store that waits
}


def test_every_module_has_its_test_module() -> None:
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(PACKAGE).with_suffix("").as_posix()
        name = TESTED_ELSEWHERE.get(module, f"test_{module.replace('/', '_')}")
        if name is not None and not (TESTS / f"{name}.py").is_file():
            missing.append(f"gateway/{module}.py: tests/{name}.py")
    assert missing == []


def test_test_modules_import_helpers_not_fixtures_or_other_tests() -> None:
    found = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                names = [f"tests.{module}" if node.level else module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [
                f"{path.name}: {name}"
                for name in names
                if name == "tests.conftest" or name.startswith("tests.test_")
            ]
    assert found == []


def test_architecture_lists_every_module_once() -> None:
    """ARCHITECTURE.md's table "Where each thing lives" is the package, no more, no less."""
    text = (TESTS.parent / "ARCHITECTURE.md").read_text()
    listed = re.findall(r"^\| `([\w/]+\.py)` \|", text, re.MULTILINE)
    modules = [path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")]
    assert sorted(listed) == sorted(modules)

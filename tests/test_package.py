"""The `gateway` package as users get it: its public surface (as httpx tests its
`__all__`) and the wheel, installed in a fresh virtual environment."""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx

import gateway
from tests.helpers import free_port
from tests.helpers_deploy import terminate, wait_http

ROOT = Path(__file__).resolve().parent.parent


def test_all_lists_exactly_the_public_names():
    public = {
        name
        for name, value in vars(gateway).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(gateway.__all__) == public | {"__version__"}


def test_all_is_sorted_and_every_name_in_it_is_importable():
    assert gateway.__all__ == sorted(gateway.__all__)
    namespace: dict[str, object] = {}
    exec("from gateway import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(gateway.__all__)


def test_the_simulator_is_a_tool_outside_the_public_surface():
    from gateway.simulator import Simulator

    assert "Simulator" not in gateway.__all__
    assert not hasattr(gateway, "Simulator")
    assert Simulator.__module__ == "gateway.simulator"


def test_version_is_the_installed_distribution_version():
    assert gateway.__version__ == importlib.metadata.version("sse-gateway")


def run(*command: str | Path) -> str:
    # Without PYTHONPATH: a checkout on it makes pip see the project as installed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=180, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_wheel_has_every_module_and_serves_the_page_it_carries(tmp_path):
    """Built from a copy of the sources (no stale `build/`), installed with pip into a
    new venv that borrows only the dependencies from this one; served from there."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("gateway", "web"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, source)
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel)
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    site = Path(run(python, "-I", "-c", where).strip())
    # The dependencies: this environment's packages, after the venv's own.
    paths = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "dependencies.pth").write_text("".join(f"{path}\n" for path in sorted(paths)))

    probe = (
        "import json, pathlib, gateway, gateway.web; "
        "package = pathlib.Path(gateway.__file__).parent; "
        "print(json.dumps([str(package), str(gateway.web.DEFAULT_DIRECTORY), "
        "sorted(str(p.relative_to(package)) for p in package.rglob('*.py'))]))"
    )
    package, page, modules = json.loads(run(python, "-I", "-c", probe))
    assert Path(package) == site / "gateway"
    assert Path(page) == site / "gateway" / "static"
    assert modules == sorted(
        str(path.relative_to(ROOT / "gateway")) for path in (ROOT / "gateway").rglob("*.py")
    )

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PYTHON"))}
    command = [venv / "bin" / "sse-gateway", "serve", "--port", str(port)]
    log = tmp_path / "serve.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=stderr)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/healthz", proc, "the installed gateway")
        with httpx.Client(base_url=url, timeout=10) as client:
            for path, file in [("/", "index.html"), ("/app.js", "app.js")]:
                response = client.get(path)
                assert response.status_code == 200, log.read_text()
                assert response.content == (ROOT / "web" / file).read_bytes()
                assert "script-src 'self'" in response.headers["content-security-policy"]
    finally:
        terminate(proc)

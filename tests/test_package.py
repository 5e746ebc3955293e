"""The public surface of the `gateway` package (as httpx tests its `__all__`)."""

import importlib.metadata
import inspect

import gateway


def test_all_lists_exactly_the_public_names():
    public = {
        name
        for name, value in vars(gateway).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert set(gateway.__all__) == public | {"__version__"}


def test_version_is_the_installed_distribution_version():
    assert gateway.__version__ == importlib.metadata.version("sse-gateway")

"""sse-gateway: relay OpenAI-compatible token streams to clients as Server-Sent Events.

The public surface is `__all__` (tests/test_package.py holds it to that). The
built-in upstream for tests and demos is `gateway.simulator.Simulator`, outside it.
"""

from gateway.app import create_app
from gateway.config import ConfigError, Settings
from gateway.config_loader import load_settings

__all__ = ["ConfigError", "Settings", "__version__", "create_app", "load_settings"]

__version__ = "0.1.0"

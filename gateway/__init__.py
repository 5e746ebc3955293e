"""sse-gateway: relay OpenAI-compatible token streams to clients as Server-Sent Events."""

from gateway.app import create_app
from gateway.config import ConfigError, Settings, load_settings
from gateway.simulator import Simulator

__all__ = ["ConfigError", "Settings", "Simulator", "__version__", "create_app", "load_settings"]

__version__ = "0.1.0"

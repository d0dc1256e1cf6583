"""How vidal's stages run: the config, the Ray Data runner, preflight, the report and the demo."""

from contracts import __version__

__all__ = ["__version__"]

"""How vidal's stages run: config, storage, manifests and the Ray Data runner."""

__version__ = "0.1.0"

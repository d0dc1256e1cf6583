"""The floor both halves stand on: what the pipeline writes and the trainer reads, defined once.

Storage URIs and atomic writes (``store``), the root lock (``lock``), stage manifests (``manifest``),
the shard format and every encoding in it (``shard_format``), the status vocabulary (``status``),
the video-id rule (``video_ids``) and config I/O (``config_io``). Nothing here imports ``pipeline``,
``stages`` or ``model``.
"""

__version__ = "0.1.0"

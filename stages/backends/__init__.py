"""Model backends by family, each registered into ``contracts.backends`` when its module is imported.

``depth`` (``hf:``, ``midas:``, ``tiny``), ``infrared`` (``munit:``, ``cyclegan:``, ``tiny``),
``asr`` (``whisper:``, ``tiny``), ``frame_caption`` / ``video_caption`` (``hf:``, ``tiny``) and
``llm`` (``openai:``, ``hf:``, ``tiny``). Stages never import a family's loader: they call
``backends.check(kind, spec, …)`` on the driver and ``backends.load(kind, spec, device, dtype, …)``
in ``setup()``, and the registry imports the kind's modules listed in ``BACKEND_MODULES``.
"""

from __future__ import annotations

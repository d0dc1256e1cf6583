"""The environment a Ray worker gets from its driver (``runtime_env={"env_vars": worker_env()}``).

Workers on other nodes do not inherit the driver's shell: the storage settings (``$VIDAL_STORAGE``) and
the Hugging Face settings a user set for the run must travel with it. A Hugging Face variable travels
only when the driver has it: forcing ``HF_HUB_OFFLINE=0`` on workers (as vidal once did) turned an
offline run online on every node but the driver's.
"""

from __future__ import annotations

import os

from contracts import store

# what huggingface_hub / transformers read: offline mode, credentials, where the cache lives
HF_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HF_HOME", "HF_HUB_CACHE", "HF_ENDPOINT")


def worker_env() -> dict[str, str]:
    """Env vars for Ray workers: the storage settings, and each Hugging Face variable the driver has set."""
    return {**{k: os.environ[k] for k in HF_VARS if k in os.environ}, **store.worker_env()}

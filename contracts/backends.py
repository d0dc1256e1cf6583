"""One registry of model backends: every model is named ``family:name_or_path`` and loaded by kind.

The shape is timm's ``register_model`` / ``create_model``: a backend module decorates its loader with
``@register(kind, family, ...)``, and every caller goes through three functions that parse the name
once (``parse``), check it cheaply on the driver (``check``) and load it on a worker (``load``)::

    spec = backends.parse("depth", "hf:Intel/dpt-large")          # config time: family and variant
    backends.check("depth", "midas:dpt_large_384.pt", device="auto", precision="bf16")  # driver: files
    net = backends.load("depth", "tiny:dpt", "cpu", "fp32", max_side=512)                # worker

A *kind* is what the model does (``depth``, ``infrared``, ``asr``, ``frame_caption``,
``video_caption``, ``llm``, ``text``); a *family* is how it is stored (``hf:<hub id or dir>``,
``midas:<file.pt>``, ``munit:<file.pt>``, ``cyclegan:<file.pt>``, ``whisper:<size or .pt>``,
``openai:<model>``, ``tiny`` / ``tiny:<variant>``: a small random-weight model for tests and the
offline demo). Every failure is a ``ModelLoadError`` whose message starts ``<kind> model '<spec>':``
and, when the family is the problem, lists the kind's known families.

Loaders get the parsed ``ModelSpec``, a ``torch.device`` and an autocast / weight dtype (``None``:
fp32), plus keyword options: one set per kind (documented by the kind's backend module, mostly the
stage config's keys), of which each family takes the ones it uses by name and ignores the rest
(``**_``), so a stage never branches on the family.

Backend modules register themselves when imported, and ``BACKEND_MODULES`` below names, as strings,
the modules that hold each kind's backends: the registry imports them the first time a kind is used.
A table of module paths rather than package entry points because the backends ship inside this one
package (no third party registers families), an entry point would need a reinstall after every edit,
and the table keeps ``contracts`` importing nothing of ``stages`` or ``model`` until a kind is asked
for. torch is imported lazily too: the floor stays light for the stages that load no model.

Device and precision names are validated here once (``check_device``, ``check_precision``), by the
stage configs at config time and by ``check`` on the driver, before any work.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# kind -> the modules whose import registers its families (imported on first use of the kind)
BACKEND_MODULES: dict[str, tuple[str, ...]] = {
    "depth": ("stages.backends.depth", "stages.backends.midas"),
    "infrared": ("stages.backends.infrared",),
    "asr": ("stages.backends.asr",),
    "frame_caption": ("stages.backends.captioners",),
    "video_caption": ("stages.backends.captioners",),
    "llm": ("stages.backends.llm", "stages.backends.openai_client"),
    "text": ("model.text",),
    "alignment": ("stages.backends.alignment",),
}
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded (unknown family, missing, truncated, of another architecture)."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model name: ``hf:Intel/dpt-large`` of kind ``depth`` -> family ``hf``, name ``Intel/dpt-large``."""

    kind: str
    family: str
    name: str  # "" for a bare ``tiny``
    text: str  # as written in the config: what errors and manifests show

    def __str__(self) -> str:
        return self.text

    @property
    def local_path(self) -> Path | None:
        """The name as a local path when it reads as one (``/``, ``./``, ``../``, ``~``, or an existing
        directory); ``None`` for a hub id, which the model library resolves (and caches) itself."""
        if self.name.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.expanduser(self.name)):
            return Path(self.name).expanduser()
        return None

    def error(self, what: str) -> ModelLoadError:
        """A ``ModelLoadError`` in the registry's one message shape: ``<kind> model '<spec>': <what>``."""
        return ModelLoadError(f"{self.kind} model {self.text!r}: {what}")


@dataclass(frozen=True)
class Backend:
    """One family of one kind: its loader, its driver-side checker, and how its names look."""

    kind: str
    family: str
    load: Callable[..., Any]
    check: Callable[..., None] | None
    usage: str  # e.g. "hf:<hub id or local dir>", shown in errors
    variants: tuple[str, ...] | None  # allowed names (tiny's architectures); None: any non-empty name
    bare: bool  # a name without "family:" belongs to this family (the text towers' hub ids)


_REGISTRY: dict[tuple[str, str], Backend] = {}
_IMPORTED: set[str] = set()


def register(
    kind: str,
    family: str,
    *,
    usage: str,
    check: Callable[..., None] | None = None,
    variants: tuple[str, ...] | None = None,
    bare: bool = False,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: ``fn(spec, device, dtype, **options)`` loads models of ``kind`` stored as ``family``.

    ``check(spec, **options)`` (optional) raises ``ModelLoadError`` for what would fail every load
    (a missing or truncated file) without loading weights. ``variants``: the names the family takes
    (tiny's architectures; ``()``: none); a bare ``tiny`` means the first. Registering
    the same (kind, family) twice replaces the first (a module imported again re-registers itself).
    """

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[(kind, family)] = Backend(kind, family, fn, check, usage, variants, bare)
        return fn

    return decorate


def _ensure(kind: str) -> None:
    for module in BACKEND_MODULES.get(kind, ()):
        if module not in _IMPORTED:
            importlib.import_module(module)  # its @register calls fill the registry
            _IMPORTED.add(module)


def families(kind: str) -> dict[str, Backend]:
    """The registered families of ``kind`` (its backend modules imported first)."""
    _ensure(kind)
    return {f: b for (k, f), b in _REGISTRY.items() if k == kind}


def known(kind: str) -> str:
    """The families of ``kind`` as a user writes them, for error messages."""
    return ", ".join(b.usage for b in families(kind).values())


def parse(kind: str, spec: str) -> ModelSpec:
    """``family:name_or_path`` -> a ``ModelSpec`` of a registered family of ``kind``; no I/O.

    ``tiny`` needs no name; a family with ``variants`` takes only those names. Cheap enough for
    config validators. Raises ``ModelLoadError`` naming the kind, the spec and the known families.
    """
    text = (spec or "").strip()
    found = families(kind)
    if not found:
        kinds = sorted({k for k, _ in _REGISTRY} | set(BACKEND_MODULES))
        raise ModelLoadError(
            f"{kind} model {spec!r}: no backends of kind {kind!r} (kinds: {', '.join(kinds)})"
        )
    if not text:
        raise ModelLoadError(f"{kind} model {spec!r}: empty name; expected one of {known(kind)}")
    family, sep, name = text.partition(":")
    if not sep and family not in found:
        bare = next((b for b in found.values() if b.bare), None)
        if bare is None:
            raise ModelLoadError(
                f"{kind} model {spec!r}: expected family:name, e.g. hf:{text}; known: {known(kind)}"
            )
        family, name = bare.family, text
    backend = found.get(family)
    if backend is None:
        raise ModelLoadError(f"{kind} model {spec!r}: unknown family {family!r}; known: {known(kind)}")
    if backend.variants is not None:
        if name and name not in backend.variants:
            listed = "".join(f", {family}:{v}" for v in backend.variants)
            raise ModelLoadError(f"{kind} model {spec!r}: the {family} variants are {family}{listed}")
        name = name or next(iter(backend.variants), "")
    elif not name:
        raise ModelLoadError(f"{kind} model {spec!r}: {family}: needs a name; expected {backend.usage}")
    return ModelSpec(kind, family, name, text)


def check(
    kind: str, spec: str, *, device: str = "auto", precision: str = "auto", **options: Any
) -> ModelSpec:
    """On the driver, before any work: the name, the device and precision names, and the family's own
    checks (files present and readable, weights that fit the architecture), without loading weights."""
    check_device(device)
    check_precision(precision)
    parsed = parse(kind, spec)
    backend = _REGISTRY[(kind, parsed.family)]
    if backend.check is not None:
        backend.check(parsed, **options)
    return parsed


def load(
    kind: str,
    spec: str,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype | None = "auto",
    **options: Any,
) -> Any:
    """The model named ``spec``, loaded by its family's loader onto ``device``.

    ``device``: ``auto`` (the first CUDA device when visible, else CPU), ``cpu``, ``cuda:1``, or a
    ``torch.device``. ``dtype``: a precision name (``auto``: bf16 or fp16 on CUDA, fp32 on CPU) or a
    ``torch.dtype``; the loader gets ``None`` for fp32. What comes back is the family's model object
    (the kind's modules document its surface).
    """
    parsed = parse(kind, spec)
    dev = resolve_device(device)
    resolved = resolve_dtype(dev, dtype) if isinstance(dtype, str) else dtype
    return _REGISTRY[(kind, parsed.family)].load(parsed, dev, resolved, **options)


def check_pretrained_dir(spec: ModelSpec, **_: Any) -> None:
    """The checker of families stored as a hub id or a ``save_pretrained`` directory: a local path must
    be a directory with a ``config.json`` (a hub id is resolved, and cached, by the library on the worker)."""
    if (d := spec.local_path) is not None and not (d / "config.json").is_file():
        what = "no config.json in" if d.is_dir() else "directory not found:"
        raise spec.error(f"{what} {d} (expected a directory written by save_pretrained, or a hub id)")


@contextlib.contextmanager
def loading(
    spec: ModelSpec, errors: tuple[type[BaseException], ...] = (OSError, ValueError, KeyError)
) -> Iterator[None]:
    """Around a model library's loader (``from_pretrained``): its errors become one ``ModelLoadError``
    saying what to do, offline included."""
    try:
        yield
    except errors as e:
        raise spec.error(
            f"cannot load it ({' '.join(str(e).split())[:300]}); with HF_HUB_OFFLINE=1 a hub id "
            "must be in the local cache, or give a local directory"
        ) from None


# -- device and precision ----------------------------------------------------------------------------
def check_device(name: str) -> str:
    """``auto``, ``cpu``, ``cuda``, ``cuda:1``, …: ``ValueError`` for a name torch does not parse.

    No CUDA is required here: the driver may have none while the workers do."""
    if name != "auto":
        import torch

        try:
            torch.device(name)
        except (RuntimeError, TypeError) as e:
            raise ValueError(f"device {name!r}: {e}; expected auto, cpu, cuda or cuda:<index>") from None
    return name


def check_precision(name: str) -> str:
    """``auto`` | ``bf16`` | ``fp16`` | ``fp32``, else ``ValueError``."""
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r}: expected one of {', '.join(PRECISIONS)}")
    return name


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto``: the first CUDA device when one is visible, else CPU; or the named device (which must exist)."""
    import torch

    if isinstance(name, torch.device):
        return name
    if check_device(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but no CUDA device is visible to this process")
    return device


def resolve_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The dtype of a precision on a device: ``auto`` is bf16 on CUDA when supported, else fp16 on CUDA,
    and fp32 (``None``) on CPU."""
    import torch

    if check_precision(precision) == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16

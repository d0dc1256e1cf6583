"""Everything about the package is in pyproject.toml; this adds one build step.

A wheel carries ``configs/`` and ``manifests/`` as package data under ``vidal/shipped/``, so that
``vidal run --config demo`` and the configs' relative paths (``configs/model/tiny.yaml``,
``manifests/stopwords.txt``) resolve after a non-editable install (``contracts.shipped``). An
editable install needs no copy: it reads the checkout's own folders.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SHIPPED = ("configs", "manifests")


class BuildWithShippedFiles(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        here = Path(__file__).resolve().parent
        for folder in SHIPPED:
            for src in sorted((here / folder).rglob("*")):
                if src.is_file() and src.suffix in (".yaml", ".txt"):
                    target = Path(self.build_lib, "vidal", "shipped", src.relative_to(here))
                    self.mkpath(str(target.parent))
                    self.copy_file(str(src), str(target), preserve_mode=False)


setup(cmdclass={"build_py": BuildWithShippedFiles})

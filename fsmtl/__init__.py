"""fsmtl: high-throughput multi-task learning for few-shot image classification.

The stages are the subpackages ``fsmtl.preprocess``, ``fsmtl.pipelines``, ``fsmtl.models``,
``fsmtl.train``, ``fsmtl.eval`` and ``fsmtl.benchmarks``. Their folders sit at the top of the
repository; pyproject.toml maps them into this namespace (setuptools ``package-dir``), so an
installed fsmtl has one top-level name. This package itself holds the command line and the
helpers every stage shares (errors, atomic file writes, machine description).

In a source checkout used without installing (``PYTHONPATH=<repo>``, as on a lent GPU machine),
the same mapping is made here: the stage folders beside this package are found as
``fsmtl.<stage>``.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

STAGES = ("preprocess", "pipelines", "models", "train", "eval", "benchmarks")


class _SourceStages(importlib.abc.MetaPathFinder):
    """Finds ``fsmtl.<stage>`` in ``root/<stage>/`` (a source checkout; only the six stages)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        prefix, _, stage = fullname.partition(".")
        if prefix != __name__ or stage not in STAGES:
            return None
        init = self.root / stage / "__init__.py"
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


def _map_source_stages() -> None:
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and all((root / s / "__init__.py").is_file() for s in STAGES):
        if not any(isinstance(f, _SourceStages) for f in sys.meta_path):
            # first, before an editable install's finder: the stages beside the imported fsmtl/
            # are the ones meant (a second checkout on PYTHONPATH must not get the installed one's)
            sys.meta_path.insert(0, _SourceStages(root))


_map_source_stages()

"""hypocheck: declarative, test-suite-style checks of scientific claims about perturbation models.

The engine knows nothing about biology: hypotheses (YAML) are validated by
``schema``, expanded into ``cases``, run through registered ``probe``s, and
judged into verdicts; the pytest ``plugin`` ties it together.
"""

from .api import Result, run
from .errors import HypocheckError
from .registry import ProbeResult, probe

__all__ = ["HypocheckError", "ProbeResult", "Result", "probe", "run"]
__version__ = "0.1.0"

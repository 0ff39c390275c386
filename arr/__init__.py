"""arr: rubric-based rewards (Auto-Rubric as Reward) and Rubric Policy Optimization for diffusion policies."""

from arr.backends import load_backend
from arr.rubrics import Criterion, GuideCategory, Rubric, RubricParseError

__version__ = "0.1.0"

__all__ = ["Criterion", "GuideCategory", "Rubric", "RubricParseError", "load_backend", "RubricJudge"]


def __getattr__(name: str):
    # RubricJudge pulls in the cache and templates; import it lazily to keep `import arr` light.
    if name == "RubricJudge":
        from arr.judge import RubricJudge

        return RubricJudge
    raise AttributeError(f"module 'arr' has no attribute {name!r}")

"""The graded cases of a task: explicit edge cases, then Hypothesis draws (seeded)."""

from __future__ import annotations

import os

from minicrate.core.backend import get_backend
from minicrate.grading.types import DEFAULT_SEED, Task

_SPEC_CACHE: dict = {}


def draw_specs(task: Task, n: int, seed: int) -> list:
    """The task's explicit specs, then up to ``n`` Hypothesis-drawn specs (deterministic).

    Hypothesis runs with ``@seed(seed)``, no example database and no
    shrinking, so the same ``(task, n, seed)`` always gives the same specs.
    """
    key = (task.id, n, seed)
    if key not in _SPEC_CACHE:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as hyp_seed

        drawn = []

        @hyp_seed(seed)
        @settings(
            max_examples=max(1, n),
            database=None,
            deadline=None,
            derandomize=False,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            print_blob=False,
            report_multiple_bugs=False,
        )
        @given(task.strategy)
        def collect(spec):
            drawn.append(spec)

        if n > 0:
            collect()
        specs = []
        for spec in list(task.explicit) + drawn[:n]:
            if spec not in specs:
                specs.append(spec)
        _SPEC_CACHE[key] = specs
    return [dict(s) for s in _SPEC_CACHE[key]]


def make_cases(task: Task, *, seed=None, examples=None, backend="numpy") -> list:
    """The graded :class:`Case` list of a task."""
    seed = default_seed() if seed is None else int(seed)
    n = task.examples if examples is None else int(examples)
    xp = get_backend(backend)
    return [task.build(spec, xp) for spec in draw_specs(task, n, seed)]


def default_seed() -> int:
    """``MINICRATE_GRADING_SEED`` if set (private variants), else :data:`DEFAULT_SEED`."""
    env = os.environ.get("MINICRATE_GRADING_SEED")
    return int(env) if env else DEFAULT_SEED

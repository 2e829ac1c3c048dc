"""The `scaling:` section of a space file: how `archspace dashboard` fits the study's scaling laws.

    scaling:
      family: [mixer.preset]      # axes naming a design; the other axes (size, budget) span its grid
      loss: val/loss              # the metric fitted (a validation metric: select on validation)
      params: params_non_embedding  # N: params_non_embedding (Kaplan et al.'s choice), params or active_params
      bootstrap: 1000             # resamples for the intervals (Besiroglu et al. used 4,000)
      budgets: [1e12, 1e13]       # FLOP budgets of the compute-optimal table (default: the study's, x10, x100)
      level: 0.95

Nothing here changes what is trained, so it is not part of the space's hash: the analysis can be changed
after a study ran.
"""
from __future__ import annotations

from typing import Any, Optional

SIZE_METRICS = ("params_non_embedding", "params", "active_params")
KEYS = ("family", "loss", "params", "bootstrap", "budgets", "level")
DEFAULTS = {"family": [], "loss": "val/loss", "params": "params_non_embedding", "bootstrap": 1000, "budgets": None,
            "level": 0.95}


def parse_scaling(raw: Any, marks, axis_names: list[str], expand) -> Optional[dict]:
    """Validate a `scaling:` mapping (None when absent). `expand(text, where)` turns a short axis path into the
    full one as the axes' own names are (e.g. mixer.preset -> model.mixer.preset)."""
    if raw is None:
        return None
    where = ("scaling",)
    if not isinstance(raw, dict):
        raise marks.error("scaling must be a mapping (family, loss, params, bootstrap, budgets, level)", where)
    from ..errors import closest

    for key in raw:
        if key not in KEYS:
            guess = closest(str(key), KEYS)
            raise marks.error(f"unknown key '{key}'", where + (key,), at_key=True,
                              hint=(f"Did you mean '{guess}'? " if guess else "") + f"Valid keys here: {', '.join(KEYS)}.")
    out = {**DEFAULTS, **{k: v for k, v in raw.items()}}
    family = out["family"]
    if not isinstance(family, list):
        raise marks.error("scaling.family must be a list of axis names", where + ("family",))
    names = []
    for i, name in enumerate(family):
        full = name if name in axis_names else ".".join(expand(str(name), where + ("family", i)))
        if full not in axis_names:
            raise marks.error(f"scaling.family: {name!r} is not an axis of this space", where + ("family", i),
                              hint=f"Axes: {', '.join(axis_names)}.")
        names.append(full)
    out["family"] = names
    if not isinstance(out["loss"], str) or not out["loss"].startswith(("val/", "test/")):
        raise marks.error(f"scaling.loss must be a val/ or test/ metric, got {out['loss']!r}", where + ("loss",))
    if out["params"] not in SIZE_METRICS:
        raise marks.error(f"scaling.params must be one of {', '.join(SIZE_METRICS)}, got {out['params']!r}",
                          where + ("params",))
    b = out["bootstrap"]
    if isinstance(b, bool) or not isinstance(b, int) or b < 0:
        raise marks.error(f"scaling.bootstrap must be a whole number >= 0, got {b!r}", where + ("bootstrap",))
    budgets = out["budgets"]
    if budgets is not None:
        if not isinstance(budgets, list) or not budgets or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0 for x in budgets):
            raise marks.error("scaling.budgets must be a non-empty list of positive FLOP counts", where + ("budgets",))
        out["budgets"] = [float(x) for x in budgets]
    level = out["level"]
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise marks.error(f"scaling.level must lie in (0, 1), got {level!r}", where + ("level",))
    return out

"""The base of archspace's YAML schema classes (design files, task sections, search spaces)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """Unknown keys are errors and values are not coerced (a YAML 1.1 surprise stays visible as a type error)."""

    model_config = ConfigDict(extra="forbid", strict=True)

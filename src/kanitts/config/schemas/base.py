"""What every schema shares: strictness, and text fields that keep a YAML number's characters."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict

from kanitts.config.yaml_loading import number_as_text

Text = Annotated[str, BeforeValidator(number_as_text)]


class Strict(BaseModel):
    """Base of every schema: unknown keys are errors, values are not silently coerced from text.

    :attr:`notes` is how a file says something the user should know that is not an error (a key
    that is accepted for the reference pipeline's sake but does nothing here): `key.path: note`
    lines that loading prefixes with the file name and adds to ``ConfigSet.warnings``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @property
    def notes(self) -> list[str]:
        return []

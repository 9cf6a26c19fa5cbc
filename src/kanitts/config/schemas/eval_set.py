"""eval_set.yaml: the prompts eval generates, one `id: sentence` pair each."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field, field_validator

from kanitts.config.schemas.base import Strict, Text


@dataclass(frozen=True)
class EvalSentence:
    sentence_id: str
    text: str

    @property
    def speaker(self) -> str | None:
        """The `speaker: ` prefix the seed's prompts carry, if any."""
        head, sep, _ = self.text.partition(":")
        if sep and head.strip() and " " not in head.strip():
            return head.strip()
        return None

    @property
    def spoken_text(self) -> str:
        """The words to be said: the text without its speaker prefix."""
        return self.text.partition(":")[2].strip() if self.speaker else self.text.strip()


class EvalSetConfig(Strict):
    eval_set: list[dict[Text, Text]] = Field(min_length=1)

    @field_validator("eval_set")
    @classmethod
    def _one_sentence_per_item(cls, items: list[dict[str, str]]) -> list[dict[str, str]]:
        seen = set()
        for index, item in enumerate(items):
            if len(item) != 1:
                raise ValueError(f"item [{index}] must be one `id: sentence` pair, got {len(item)} keys")
            (key, text), = item.items()
            if key in seen:
                raise ValueError(f"item [{index}]: duplicate sentence id {key!r}")
            if not text.strip():
                raise ValueError(f"item [{index}] ({key}): empty sentence")
            sentence = EvalSentence(key, text)
            if not sentence.spoken_text:
                raise ValueError(
                    f"item [{index}] ({key}): only the speaker prefix {sentence.speaker + ':'!r}, "
                    "nothing to say after it"
                )
            seen.add(key)
        return items

    @property
    def sentences(self) -> list[EvalSentence]:
        return [EvalSentence(*next(iter(item.items()))) for item in self.eval_set]

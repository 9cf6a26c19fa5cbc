"""Intelligibility: how much of the sentence an ASR model hears in a sample, as WER and CER.

Both texts are normalised first, so that casing, punctuation and spelling conventions are not
counted as errors:

- English (``en``, ``english``, ``en-US``, ...): Whisper's English normaliser as transformers
  ships it (``EnglishTextNormalizer``): lower case, bracketed asides and fillers (um, uh)
  dropped, contractions and titles expanded (won't -> will not, Mr -> mister), spelled-out
  numbers turned into digits (twenty one -> 21), British spellings mapped to American ones
  with the model's ``normalizer.json`` (:attr:`kanitts.asr.Transcriber.spelling`; without it
  that one step is skipped), punctuation and diacritics removed.
- Any other language: Whisper's basic normaliser (Unicode NFKC, lower case, bracketed asides
  dropped, punctuation and symbols removed, spaces collapsed), which keeps diacritics.

The error rates are jiwer's (word and character edit distance over the reference length).
The caller passes the text that is spoken: a speaker prefix (``alice: ``) selects the voice and
is not said, so it must be removed before scoring or it counts as deleted words.
"""

from __future__ import annotations

from typing import Any


def is_english(language: str | None) -> bool:
    """``en``, ``english``, ``en-GB``, ``en_US`` (any case) name English."""
    base = (language or "").strip().lower().replace("_", "-").split("-")[0]
    return base in ("en", "english")


def normalize(text: str, language: str | None = "en", spelling: dict[str, str] | None = None) -> str:
    """``text`` as it is compared: the English normaliser for English, the basic one otherwise."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    if is_english(language):
        normalizer = EnglishTextNormalizer(spelling or {})
    else:
        normalizer = BasicTextNormalizer()
    return " ".join(normalizer(text).split())


def intelligibility(
    reference_text: str,
    transcript: str,
    language: str | None = "en",
    spelling: dict[str, str] | None = None,
) -> dict[str, Any]:
    """WER and CER of ``transcript`` against ``reference_text`` (the spoken sentence).

    Returns ``wer``, ``cer`` (0 is every word heard; they can exceed 1 when the transcript has
    more words than the sentence), the ``transcript`` as heard and both normalised texts
    (``reference_normalized``, ``transcript_normalized``), so a reader sees what was compared.
    A reference with nothing left after normalising (only punctuation, say) has no error rate:
    ``wer`` and ``cer`` are None.
    """
    import jiwer

    reference = normalize(reference_text, language, spelling)
    hypothesis = normalize(transcript, language, spelling)
    wer = cer = None
    if reference:
        wer = round(float(jiwer.wer(reference, hypothesis)), 4)
        cer = round(float(jiwer.cer(reference, hypothesis)), 4)
    return {
        "wer": wer,
        "cer": cer,
        "transcript": transcript,
        "reference_normalized": reference,
        "transcript_normalized": hypothesis,
    }

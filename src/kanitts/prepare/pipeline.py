"""A whole prepare run: the order of the steps and which rank does what.

1. **Output**: refused early (unwritable, locked by another run, existing without
   ``--resume``/``--overwrite``), before anything heavy is loaded (:mod:`.output`).
2. **Input**: a folder of long recordings without transcripts is first cut at pauses and
   transcribed into ``<output>.clips/`` (:mod:`.recordings`; ``--transcribe-only`` stops there
   for review); then the items, numbered and cut into shards of ``shard_size`` (:mod:`.sources`).
3. **Codec**: the one the caller chose, loaded here from a :class:`CodecSpec` or given loaded.
4. **Shards**: this rank's unfinished shards cleaned (:mod:`.cleaning`) and encoded
   (:mod:`.encoding`) into ``<output>.partial/`` (:mod:`.shards`).
5. **Assembly** on rank 0 once all shards are there, then the optional push (:mod:`.assembly`).

Several GPUs: under ``accelerate launch`` / ``torchrun`` every rank encodes the shards
``k % world_size == rank`` and rank 0 merges them (see docs/prepare.md).
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

from kanitts.codecs import Codec, load_codec
from kanitts.errors import UserError
from kanitts.prepare.assembly import PrepareResult, assemble, push, result_from_summary
from kanitts.prepare.distributed import Ranks
from kanitts.prepare.encoding import encode_shards
from kanitts.prepare.options import CodecSpec, PrepareOptions
from kanitts.prepare.output import claim_output, early_refusal, lock_output, unwritable
from kanitts.prepare.recordings import clips_folder, needs_segmenting, prepare_recordings
from kanitts.prepare.shards import build_manifest, remove_stale_temporaries, shard_done
from kanitts.prepare.sources import open_source


def prepare_dataset(options: PrepareOptions, codec: CodecSpec | Codec) -> PrepareResult:
    """Encode ``options.input`` into the codec dataset ``options.output`` with ``codec``.

    ``codec`` is required: a :class:`CodecSpec` (loaded here, on this rank's GPU under a
    launcher) or an already loaded :class:`Codec`. There is no default on purpose: the codec
    ``model_config.yaml`` names is what training decodes with, and
    :func:`kanitts.recipes.prepare.run` is where that file is read.

    The output is locked for the whole run: a second run into it is refused, naming this one.
    A process group made for the run is destroyed when it ends, also on an error.
    """
    options.validate()
    if isinstance(codec, CodecSpec):
        codec.validate()
    with ExitStack() as held:
        ranks = Ranks(options.rank, options.world_size)
        held.callback(ranks.close)
        return _prepare_dataset(options, codec, ranks, held)


def _prepare_dataset(options: PrepareOptions, codec: CodecSpec | Codec, ranks: Ranks, held: ExitStack) -> PrepareResult:
    started = time.perf_counter()
    output = Path(options.output).expanduser().absolute()
    partial = output.with_name(output.name + ".partial")

    # Refuse early, before anything heavy is loaded.
    # Rank 0 rules on the output folder for everyone; runs split by hand (--rank/--world-size
    # without a launcher) each rule for themselves.
    rules = ranks.rank == 0 or not ranks.collective
    early_error = None
    if rules:
        early_error = (
            unwritable(output)
            or lock_output(output, ranks, held)
            or (None if options.transcribe_only else early_refusal(output, partial, options))
        )
    early_error = ranks.broadcast(early_error)
    if early_error:
        raise UserError(early_error)

    recordings: list[str] = []
    if needs_segmenting(options):  # long recordings: cut and transcribe them first
        device = ranks.device(codec.device) if isinstance(codec, CodecSpec) else str(codec.device)
        report = prepare_recordings(options, output, ranks, device)
        recordings = report.lines()
        folder = clips_folder(output)
        if not report.complete:
            return PrepareResult(output=output, recordings=recordings, stopped=(
                f"this rank cut its recordings into {folder}; once every rank has, run them again to encode"))
        if report.clips == 0:
            raise UserError(
                f"no clip could be cut from the recordings in {options.input}: " + "; ".join(recordings[1:])
                + ". Check that they hold speech, or lower --vad-threshold / --segment-min-duration"
            )
        if options.transcribe_only:
            return PrepareResult(output=output, recordings=recordings, stopped=(
                f"review {folder / 'metadata.csv'} (id|text||confidence|flags: correct the text, clear the "
                "flags of a clip to keep it, delete a line to drop it), then encode with the same command "
                f"without --transcribe-only, or `kanitts prepare {folder} {output}`"))
        options = replace(options, input=str(folder), input_kind="folder", text_field="text")
        started = time.perf_counter()  # the summary's rate is the encoder's
    elif options.transcribe_only:
        raise UserError(
            f"--transcribe-only cuts and transcribes a folder of recordings without metadata.csv; "
            f"{options.input} is not one (it already has transcripts)"
        )

    source, source_error = None, None
    if ranks.rank == 0:  # rank 0 first, so a Hub dataset is downloaded and cached once
        try:
            source = open_source(options)
        except UserError as exc:
            source_error = str(exc)
    source_error = ranks.broadcast(source_error)
    if source_error:
        raise UserError(source_error)
    if source is None:
        source = open_source(options)
    if len(source) == 0:
        raise UserError(f"{source.description} lists no recordings")

    if isinstance(codec, CodecSpec):
        codec = load_codec(codec.kind, codec.weights, device=ranks.device(codec.device), dtype=codec.dtype)
    manifest = build_manifest(options, source, codec)

    decision: dict[str, Any] = {}
    if rules:
        try:
            decision = claim_output(output, partial, manifest, options)
        except UserError as exc:
            decision = {"error": str(exc)}
    decision = ranks.broadcast(decision)
    if "error" in decision:
        raise UserError(decision["error"])
    if decision.get("complete"):
        result = result_from_summary(output)
        result.recordings = recordings
        return result
    if ranks.collective and ranks.broadcast(manifest["fingerprint"]) != manifest["fingerprint"]:
        raise UserError(f"rank {ranks.rank} sees different inputs or codec weights than rank 0")

    result = PrepareResult(output=output, items=len(source), recordings=recordings)
    num_shards = manifest["num_shards"]
    mine = [k for k in range(num_shards) if k % ranks.world_size == ranks.rank]
    todo = [k for k in mine if not shard_done(partial, k)]
    result.shards_resumed = len(mine) - len(todo)
    remove_stale_temporaries(partial, todo)

    encode_shards(todo, source, codec, options, manifest, partial, result, ranks.rank)

    ranks.barrier()
    if ranks.rank == 0:
        missing = [k for k in range(num_shards) if not shard_done(partial, k)]
        if missing:
            if ranks.world_size > 1 and not ranks.collective:
                result.seconds = time.perf_counter() - started
                return result  # the other ranks' runs are still to come
            raise UserError(f"shards {missing[:5]} of {partial} are missing; run again with --resume")
        assemble(output, partial, manifest, result)
        if options.push_to_hub:
            push(output, options.push_to_hub, options.private)
            result.pushed_to = options.push_to_hub
    ranks.barrier()
    result.seconds = time.perf_counter() - started
    return result

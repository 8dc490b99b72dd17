"""The DALI backend: ``fn.readers.file`` -> ``image_random_crop`` -> cubic resize [-> RandAugment] -> flip + normalise.

On a CUDA training device the decoder runs as ``device="mixed"`` (nvJPEG; ``hw_decoder_load`` of
the JPEGs go to the hardware decoder of A100/H100) and everything after it on the GPU. Otherwise
the same graph runs on DALI's CPU backend (``device_id=None``), which is how CI tests it.

The reader is given this rank's files for the epoch in the order of :func:`files.epoch_order`
(no DALI-side shuffling or sharding), so both backends read the same files in the same
batches. A pipeline is built per epoch (and per resume), seeded from (seed, epoch, rank,
start_step): crops and flips are deterministic for that tuple, but a run resumed at step k gets
the same *files* at steps k.. as the uninterrupted run, with different (same-distribution) crops.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import torch

from fastmae.data.epoch import SKIP_HINT, EpochLoader, LoaderConfig, replacement_indices
from fastmae.data.files import FileSet

INSTALL_HINT = (
    "the DALI backend needs NVIDIA DALI: pip install nvidia-dali-cuda130 (CUDA 13) or nvidia-dali-cuda120 "
    "(CUDA 12), e.g. pip install 'fastmae[dali]'; or use backend='torch'"
)


def _import_dali():
    try:
        import nvidia.dali  # noqa: F401
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return DALIGenericIterator, LastBatchPolicy


def _pipeline_seed(*parts: int) -> int:
    return zlib.crc32(",".join(map(str, parts)).encode()) & 0x7FFFFFFF


def build_pipeline(
    paths: list[str],
    labels: list[int],
    config: LoaderConfig,
    *,
    seed: int,
    hw_decoder_load: float,
):
    """The DALI pipeline (not yet built) for one pass over ``paths`` in the given order."""
    from nvidia.dali import fn, pipeline_def, types

    on_gpu = config.device.type == "cuda"
    height, width = config.input_size

    @pipeline_def(
        batch_size=config.batch_size,
        num_threads=max(1, config.num_threads),
        device_id=(config.device.index or 0) if on_gpu else None,
        seed=seed,
        prefetch_queue_depth=config.prefetch,
        enable_conditionals=config.rand_augment is not None,  # auto_aug picks an operation per sample
    )
    def mae_pipeline():
        jpegs, label = fn.readers.file(files=paths, labels=labels, random_shuffle=False, name="Reader")
        decoder_args = {"hw_decoder_load": hw_decoder_load} if on_gpu else {}
        images = fn.decoders.image_random_crop(
            jpegs,
            device="mixed" if on_gpu else "cpu",
            output_type=types.RGB,
            random_area=list(config.scale),
            random_aspect_ratio=list(config.ratio),
            num_attempts=10,
            **decoder_args,
        )
        images = fn.resize(
            images, resize_x=width, resize_y=height, interp_type=types.INTERP_CUBIC, antialias=True
        )
        if config.rand_augment is not None:
            from fastmae.eval.dali_randaugment import rand_augment

            images = rand_augment(images, config.rand_augment, (height, width))
        images = fn.crop_mirror_normalize(
            images,
            dtype=types.FLOAT,
            output_layout="CHW",
            mean=[255 * m for m in config.mean],
            std=[255 * s for s in config.std],
            mirror=fn.random.coin_flip(probability=config.flip_prob),
        )
        return images, label

    return mae_pipeline()


class DaliLoader(EpochLoader):
    backend = "dali"

    def __init__(self, files: FileSet, config: LoaderConfig, *, hw_decoder_load: float = 0.65):
        _import_dali()  # fail at construction, with the install hint, not at the first batch
        super().__init__(files, config)
        self.hw_decoder_load = hw_decoder_load

    def _iterate(self, batches: list[list[int]]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Run the pipeline over ``batches``; with ``skip_bad``, a failing batch's bad files are replaced
        (in it and in every later batch) and a new pipeline resumes at that batch."""
        batches = [list(batch) for batch in batches]
        first_step = self.steps - len(batches)
        done = 0
        while done < len(batches):
            try:
                for images, labels in self._run_pipeline(batches[done:], first_step + done):
                    yield images, labels
                    done += 1
                return
            except _BatchFailed as failed:
                bad = self._bad_files(batches[done : done + 1 + self.config.prefetch])
                if not (self.config.skip_bad and bad):
                    raise self._decode_error(bad, failed.error) from failed.error
                self._replace(batches, done, bad)

    def _run_pipeline(self, batches: list[list[int]], start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        dali_iterator_class, last_batch_policy = _import_dali()
        cfg = self.config
        order = [index for batch in batches for index in batch]
        pipe = build_pipeline(
            [self.files.paths[i] for i in order],
            [self.files.labels[i] for i in order],
            cfg,
            seed=_pipeline_seed(cfg.seed, self.epoch, cfg.rank, start_step),
            hw_decoder_load=self.hw_decoder_load,
        )
        try:
            # the iterator runs the first batch in its constructor: a bad file can fail it already
            iterator = dali_iterator_class(
                [pipe],
                ["images", "labels"],
                reader_name="Reader",
                last_batch_policy=last_batch_policy.DROP,
                auto_reset=False,
            )
        except RuntimeError as error:
            raise _BatchFailed(error) from error
        try:
            while True:
                try:
                    output = next(iterator)
                except StopIteration:
                    return
                except RuntimeError as error:
                    raise _BatchFailed(error) from error
                images = output[0]["images"].to(cfg.device, non_blocking=True).to(cfg.dtype)
                labels = output[0]["labels"].reshape(-1).to(cfg.device, non_blocking=True).long()
                yield images, labels
        finally:
            del iterator, pipe

    def _bad_files(self, batches: list[list[int]]) -> dict[int, str]:
        """file index -> problem, for the files of ``batches`` that fail a full PIL decode."""
        from fastmae.data.scan import check_image

        bad = {}
        for index in sorted({index for batch in batches for index in batch}):
            problem = check_image(self.files.paths[index], full_decode=True).problem
            if problem is not None:
                bad[index] = problem
        return bad

    def _replace(self, batches: list[list[int]], start: int, bad: dict[int, str]) -> None:
        """Put a good file in place of every bad one in ``batches[start:]``, recording each replacement."""
        from fastmae.data.scan import check_image

        substitute = {}
        for index, problem in bad.items():
            for candidate in replacement_indices(index, len(self.files)):
                if candidate not in bad and check_image(self.files.paths[candidate], full_decode=True).problem is None:
                    substitute[index] = candidate
                    break
            else:
                raise RuntimeError(f"--skip_bad: {self.files.paths[index]} ({problem}) and the files after it "
                                   "all fail to decode; run 'fastmae scan-dataset' on this dataset")
        for batch in batches[start:]:
            for slot, index in enumerate(batch):
                if index in substitute:
                    batch[slot] = substitute[index]
                    self.record_bad(self.files.paths[index], bad[index], self.files.paths[substitute[index]])

    def _decode_error(self, bad: dict[int, str], error: RuntimeError) -> RuntimeError:
        """Name the file(s) DALI failed on: DALI's own message does not always say which."""
        named = "; ".join(f"{self.files.paths[i]} ({problem})" for i, problem in bad.items())
        named = named or "no file of the failing batches fails a PIL decode"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return RuntimeError(
            f"DALI failed to decode a batch (epoch {self.epoch}): {named}. "
            f"Run 'fastmae scan-dataset' to find and exclude bad files, or {SKIP_HINT}. "
            f"DALI said: {first_line} ... {_dali_detail(error)}"
        )


class _BatchFailed(Exception):
    """A DALI pipeline raised while producing a batch."""

    def __init__(self, error: RuntimeError) -> None:
        super().__init__(str(error))
        self.error = error


def _dali_detail(error: Exception) -> str:
    """The line of DALI's message that says what failed: after 'encountered:', else its last line."""
    text = str(error)
    marker = "encountered:"
    if marker in text:
        return text.split(marker, 1)[1].strip().splitlines()[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if len(lines) > 1 else ""

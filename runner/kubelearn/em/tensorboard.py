"""TensorBoard event files, through tensorboardX's writer (``pip install kubelearn[tensorboard]``).

Without tensorboardX every method is a no-op and one warning is logged, so training never
depends on it. For loss and eval curves side by side, write training scalars with
``EventWriter(model_dir)`` and evaluation scalars with ``EventWriter(model_dir / "eval")``
under the same tags (``loss``, ...), as tf.estimator does; ``tensorboard --logdir model_dir``
then overlays them.

``logdir`` may be a URL (``s3://bucket/prefix``, see :mod:`kubelearn.fs`). tensorboardX
writes local files, and an object store cannot append, so the event file is then written in
a local staging directory and uploaded whole (one PUT) at every flush and at close: a reader
of the URL sees the events up to the last flush, in a whole file.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Mapping
from typing import Any

from kubelearn import fs
from kubelearn.em.values import as_number

log = logging.getLogger(__name__)
_warned = False
_counter = itertools.count()


def _tensorboardx() -> Any:
    """tensorboardX's synchronous event writer and summary builders, or None."""
    global _warned
    try:
        from tensorboardX import summary
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto import event_pb2
    except ImportError:
        if not _warned:
            log.warning(
                "tensorboardX is not installed: TensorBoard events are not written"
                " (install kubelearn[tensorboard])"
            )
            _warned = True
        return None
    return EventsWriter, summary, event_pb2


class EventWriter:
    """Writes scalar summaries to an event file in ``logdir``.

    Built on tensorboardX's ``EventsWriter`` (the file writer inside its ``SummaryWriter``)
    rather than on ``SummaryWriter`` itself, whose queue-backed ``flush`` returns before
    queued events are written: here :meth:`flush` means the events are in the file.
    Buffered events are flushed every ``flush_secs`` and at close (or interpreter exit).
    """

    def __init__(self, logdir: str | os.PathLike[str], flush_secs: float = 10.0) -> None:
        self.logdir = os.fspath(logdir)
        self._flush_secs = flush_secs
        self._last_flush = time.monotonic()
        self._writer: Any = None
        parts = _tensorboardx()
        if parts is None:
            return
        events_writer, self._summary, self._event_pb2 = parts
        self._staging: str | None = None
        if fs.is_remote(self.logdir):
            self._staging = tempfile.mkdtemp(prefix="kubelearn-events-")
            local = self._staging
        else:
            os.makedirs(self.logdir, exist_ok=True)
            local = self.logdir
        suffix = f".{os.getpid()}.{next(_counter)}"
        self._writer = events_writer(os.path.join(local, "events"), suffix)
        self._finalizer = weakref.finalize(self, _close, self._writer, self.logdir,
                                           self._staging)

    @property
    def enabled(self) -> bool:
        """False when tensorboardX is missing and nothing is written."""
        return self._writer is not None

    def scalar(self, tag: str, value: Any, step: int) -> None:
        number = as_number(value)
        if number is None:
            raise ValueError(f"scalar {tag!r}: {value!r} is not a number")
        if self._writer is not None:
            event = self._event_pb2.Event(
                wall_time=time.time(),
                step=int(step),
                summary=self._summary.scalar(tag, float(number)),
            )
            self._writer.write_event(event)
            if time.monotonic() - self._last_flush >= self._flush_secs:
                self.flush()

    def scalars(self, prefix: str, values: Mapping[str, Any], step: int) -> None:
        """One scalar per key, tagged ``<prefix>/<key>`` (just ``<key>`` when prefix is '')."""
        bad = [f"{k}={v!r}" for k, v in values.items() if as_number(v) is None]
        if bad:
            raise ValueError(f"scalars {prefix!r}: not numbers: {', '.join(bad)}")
        for key, value in values.items():
            self.scalar(f"{prefix}/{key}" if prefix else key, value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            if self._staging is not None:
                _upload(self._staging, self.logdir)
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self._writer is not None:
            self._finalizer()
            self._writer = None

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _upload(staging: str, logdir: str) -> None:
    """Uploads the (flushed) staged event file whole; best effort: training goes on."""
    try:
        for name in sorted(os.listdir(staging)):
            fs.upload_file(os.path.join(staging, name), fs.join(logdir, name))
    except OSError as exc:
        log.warning("Could not upload TensorBoard events to %s: %s", logdir, exc)


def _close(writer: Any, logdir: str, staging: str | None) -> None:
    writer.close()
    if staging is not None:
        with contextlib.suppress(Exception):
            _upload(staging, logdir)
        shutil.rmtree(staging, ignore_errors=True)

"""Messages on the wire: one JSON header frame, then one raw buffer per tensor.

The header lists each tensor's name, dtype and shape; :func:`decode` checks every buffer
against it (and against what the receiver serves) before a single byte is used.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

ALLOWED_DTYPES = frozenset({"float32", "float64", "int64"})
#: The wire's dtypes by numpy dtype and by name (``dtype.name`` is slow on every tensor).
_NAMES = {np.dtype(name): name for name in ALLOWED_DTYPES}
_DTYPES = {name: np.dtype(name) for name in ALLOWED_DTYPES}
# Large tensors travel as several frames of at most this many bytes: ZeroMQ moves many
# 1 MiB frames several times faster than one 64 MiB frame (bench/ps_throughput.py).
FRAME_BYTES = 1 << 20
# Below this many bytes a message is copied into ZeroMQ when its sender does not say
# whether its buffers may be lent (:func:`send`).
COPY_BELOW_BYTES = 4 << 20


MAX_HEADER_BYTES = 1 << 20
MAX_TENSORS = 10_000
MAX_DIMS = 32
#: The most frames one message may have (a ROUTER adds the peer's identity in front).
MAX_FRAMES = 1 << 16
#: Every frame, header or tensor part, is at most this long; ZeroMQ drops a peer that sends
#: a longer one before buffering it (``zmq.MAXMSGSIZE`` on the receiving socket, which
#: counts a frame as it travels: with room for CurveZMQ's envelope).
MAX_FRAME_BYTES = max(FRAME_BYTES, MAX_HEADER_BYTES) + (64 << 10)
#: Header values that may be echoed back to a peer (request ids) are bounded.
MAX_ID_CHARS = 64


def send(socket: Any, frames: list[Any], *, lend: bool | None = None,
         track: bool = False) -> Any:
    """Sends the frames of one message.

    ``lend=True`` hands the buffers to ZeroMQ without a copy (pyzmq still copies frames
    under its ``copy_threshold``, 64 KiB): the sender must not change them until ZeroMQ is
    done, which ``track=True`` lets it know through the returned ``zmq.MessageTracker``
    (one that covers every lent buffer). ``zmq.Frame`` parts (see :func:`encode`) are
    shared with ZeroMQ whatever ``lend`` says, and no tracker covers them: they must not be
    changed at all once sent. ``lend=False`` copies; None copies small messages and lends
    large ones.
    """
    if lend is None:
        total = sum(_frame_length(f) for f in frames)
        lend = total >= COPY_BELOW_BYTES
    if not (lend and track):
        return socket.send_multipart(frames, copy=not lend)
    import zmq

    last = len(frames) - 1
    trackers = [socket.send(frame, 0 if i == last else zmq.SNDMORE, copy=False,
                            track=not isinstance(frame, zmq.Frame))
                for i, frame in enumerate(frames)]
    return zmq.MessageTracker(*(t for t in trackers if isinstance(t, zmq.MessageTracker)))


#: Messages a receiving socket queues per peer. A peer of the protocol has one request in
#: flight; a flooding peer is held back by TCP instead of filling the receiver's memory.
RECEIVE_QUEUE_PER_PEER = 16


def bound_socket(socket: Any) -> None:
    """Caps what a peer can make ``socket`` buffer: no frame longer than MAX_FRAME_BYTES,
    at most RECEIVE_QUEUE_PER_PEER messages queued."""
    import zmq

    socket.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES)
    socket.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE_PER_PEER)


class WireError(ValueError):
    """A message that does not match the protocol; the peer gets it as an error reply."""


def encode(header: Mapping[str, Any], tensors: Mapping[str, np.ndarray] | None = None
           ) -> list[Any]:
    """Frames for ``header`` plus ``tensors`` (C-contiguous buffers, sent without copies).

    A tensor that is the whole of a received ``zmq.Frame`` goes out as that frame, which
    ZeroMQ shares by reference count: no copy, and no tracker to wait for.
    """
    tensors = tensors or {}
    specs = []
    frames: list[Any] = [b""]
    for name, value in tensors.items():
        array, dtype = _wire_array(name, value)
        parts = _parts(array)
        specs.append({"name": name, "dtype": dtype, "shape": list(array.shape),
                      "frames": len(parts)})
        frames.extend(parts)
    frames[0] = json.dumps({**header, "tensors": specs}, separators=(",", ":")).encode()
    return frames


def _wire_array(name: str, value: Any) -> tuple[np.ndarray, str]:
    """``value`` as a C-contiguous array in native byte order, and its dtype's name."""
    array = np.asarray(value)
    dtype = _NAMES.get(array.dtype)
    if dtype is None:
        if array.dtype.name not in ALLOWED_DTYPES:
            raise WireError(f"tensor {name!r} has dtype {array.dtype.name}, which the wire "
                            f"does not carry")
        dtype = array.dtype.name  # the other byte order: sent in the native one
        array = array.astype(_DTYPES[dtype])
    if not array.flags.c_contiguous:
        array = array.copy(order="C")
    return array, dtype


def _parts(array: np.ndarray) -> list[Any]:
    """The buffers of one C-contiguous tensor: its frame when it is a whole received
    frame, else views of at most FRAME_BYTES."""
    frame = whole_frame(array)
    if frame is not None:
        return [frame]
    data = memoryview(array).cast("B") if array.size else memoryview(b"")
    return [data[i:i + FRAME_BYTES] for i in range(0, len(data), FRAME_BYTES)] or [data]


def whole_frame(array: np.ndarray) -> Any:
    """The ``zmq.Frame`` whose whole buffer the C-contiguous ``array`` views (as
    :func:`decode` returns a tensor that came in one frame), or None."""
    import zmq

    base: Any = array
    while isinstance(base, np.ndarray):
        base = base.base
    if not isinstance(base, memoryview) or not isinstance(base.obj, zmq.Frame):
        return None
    # A view of the buffer as long as the buffer, the buffer as long as the frame: the
    # array covers the frame exactly.
    if not array.nbytes == base.nbytes == len(base.obj) or not array.flags.c_contiguous:
        return None
    return base.obj


def _frame_length(frame: Any) -> int:
    buffer = getattr(frame, "buffer", frame)
    return memoryview(buffer).nbytes


def _depth_ok(data: bytes, limit: int) -> bool:
    """Whether JSON text nests at most ``limit`` levels (brackets in strings count too:
    a cheap, safe over-estimate that no real header comes near)."""
    depth = 0
    for byte in data.translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        if depth > limit:
            return False
    return True


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
MAX_HEADER_DEPTH = 16


def decode_header(frame: Any) -> dict[str, Any]:
    """The JSON object of a header frame; WireError for anything else, never another error."""
    if _frame_length(frame) > MAX_HEADER_BYTES:
        raise WireError(f"header of {_frame_length(frame)} bytes exceeds {MAX_HEADER_BYTES}")
    data = bytes(getattr(frame, "buffer", frame))
    if not _depth_ok(data, MAX_HEADER_DEPTH):
        raise WireError(f"header nests deeper than {MAX_HEADER_DEPTH} levels")
    try:
        header = json.loads(data)
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, huge integers
        raise WireError(f"header is not JSON: {str(exc)[:200]}") from None
    if not isinstance(header, dict):
        raise WireError("header must be a JSON object")
    return header


def request_id(header: Mapping[str, Any]) -> int | str | None:
    """The header's ``id`` when it is safe to echo back (a short string or an integer)."""
    value = header.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and abs(value) < 1 << 63:
        return value
    if isinstance(value, str) and len(value) <= MAX_ID_CHARS:
        return value
    return None


def check_frames(frames: Sequence[Any], max_bytes: int | None = None) -> None:
    """Refuses a message with too many frames, an oversized frame or, when ``max_bytes``
    is given, more bytes in all than that, before any of it is parsed."""
    if len(frames) > MAX_FRAMES:
        raise WireError(f"message has {len(frames)} frames, more than {MAX_FRAMES}")
    total = 0
    for frame in frames:
        length = _frame_length(frame)
        if length > MAX_FRAME_BYTES:
            raise WireError(f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")
        total += length
    if max_bytes is not None and total > max_bytes:
        raise WireError(f"message of {total} bytes exceeds {max_bytes}")


def decode(frames: Sequence[Any],
           expected: Mapping[str, tuple[str, tuple[int, ...]]] | None = None,
           header: dict[str, Any] | None = None,
           ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Parses frames into (header, tensors), validating every tensor.

    Args:
      frames: the message frames (bytes or zmq Frames).
      expected: name -> (dtype, shape) that each tensor must match; names outside it are
        rejected. None accepts any well-formed tensor (for replies from a trusted server).
      header: what :func:`decode_header` already returned for ``frames[0]``, so that a
        receiver which looked at the header first does not parse it twice (its
        ``tensors`` entry is removed); the tensors are checked against it as ever.

    Raises:
      WireError: for a malformed header, an unknown name, a dtype or shape mismatch, or a
        buffer whose length does not match its declared shape.
    """
    if not frames:
        raise WireError("empty message")
    check_frames(frames)
    if header is None:
        header = decode_header(frames[0])
    specs = header.pop("tensors", [])
    if not isinstance(specs, list) or len(specs) > MAX_TENSORS:
        raise WireError("header 'tensors' must be a list")
    if not all(isinstance(spec, dict) for spec in specs):
        raise WireError("tensor spec must be an object")
    counts = [spec.get("frames", 1) for spec in specs]
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts):
        raise WireError("tensor 'frames' must be a positive integer")
    if sum(counts) != len(frames) - 1:
        raise WireError(f"header lists {sum(counts)} buffers for {len(specs)} tensors but "
                        f"{len(frames) - 1} follow")
    tensors: dict[str, np.ndarray] = {}
    position = 1
    for spec, count in zip(specs, counts, strict=True):
        parts = frames[position:position + count]
        position += count
        name, dtype, shape = spec.get("name"), spec.get("dtype"), spec.get("shape")
        if not isinstance(name, str) or len(name) > 1024 or name in tensors:
            raise WireError(f"bad or repeated tensor name {str(name)[:200]!r}")
        if dtype not in ALLOWED_DTYPES:
            raise WireError(f"tensor {name!r}: dtype {dtype!r} is not allowed")
        if not isinstance(shape, list) or len(shape) > MAX_DIMS or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 62 for d in shape
        ):
            raise WireError(f"tensor {name!r}: bad shape {str(shape)[:200]}")
        if expected is not None:
            if name not in expected:
                raise WireError(f"tensor {name!r} is not served here")
            want_dtype, want_shape = expected[name]
            if dtype != want_dtype or tuple(shape) != tuple(want_shape):
                raise WireError(f"tensor {name!r}: expected {want_dtype} {list(want_shape)}, "
                                f"got {dtype} {shape}")
        buffers = [memoryview(getattr(part, "buffer", part)).cast("B") for part in parts]
        itemsize = _DTYPES[dtype].itemsize
        nbytes = math.prod(shape) * itemsize  # exact: Python integers
        got = sum(len(b) for b in buffers)
        if got != nbytes:
            raise WireError(f"tensor {name!r}: buffer has {got} bytes, {dtype} {shape} needs "
                            f"{nbytes}")
        if len(buffers) == 1:  # no copy: a view of the received frame
            flat = np.frombuffer(buffers[0], dtype=dtype)
        else:  # one copy, into place
            flat = np.empty(nbytes // itemsize, dtype=dtype)
            out = memoryview(flat).cast("B")
            offset = 0
            for buffer in buffers:
                out[offset:offset + len(buffer)] = buffer
                offset += len(buffer)
        tensors[name] = flat.reshape(tuple(shape))
    return header, tensors

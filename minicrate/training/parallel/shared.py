"""Named NumPy arrays in one memory-mapped file that several processes share.

:mod:`minicrate.training.parallel.procpool` keeps parameters, batches and gradients
in these blocks, so only small messages go through the pipes.
"""

from __future__ import annotations

import math
import mmap
import os
import tempfile

import numpy as np

_ALIGN = 64  # bytes: every array starts on a cache line


def shm_dir():
    """Where shared blocks live: ``/dev/shm`` (memory) when it exists, else the temp dir."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


class SharedBlock:
    """Named arrays packed into one file that several processes map.

    Args:
        specs: ``{name: (shape, dtype)}`` (creating) or the ``layout`` of an
            existing block (attaching, with ``path``).
        path: an existing block's file (the creator passes its :attr:`spec`).
    """

    def __init__(self, specs=None, *, path=None, layout=None):
        if path is None:
            layout, offset = {}, 0
            for name, (shape, dtype) in specs.items():
                dt = np.dtype(dtype)
                offset = -(-offset // _ALIGN) * _ALIGN
                layout[name] = (offset, tuple(int(s) for s in shape), dt.str)
                offset += dt.itemsize * math.prod(shape)
            nbytes = max(offset, _ALIGN)
            fd, path = tempfile.mkstemp(prefix="minicrate-", dir=shm_dir())
            os.ftruncate(fd, nbytes)
        else:
            nbytes = max([off + np.dtype(dt).itemsize * math.prod(shape)
                          for off, shape, dt in layout.values()] + [_ALIGN])
            fd = os.open(path, os.O_RDWR)
        try:
            self._mm = mmap.mmap(fd, nbytes)
        finally:
            os.close(fd)
        self.path, self.layout = path, layout
        self.arrays = {k: np.ndarray(shape, dtype=dt, buffer=self._mm, offset=off)
                       for k, (off, shape, dt) in layout.items()}

    @property
    def spec(self):
        """What another process needs to attach: ``{"path", "layout"}``."""
        return {"path": self.path, "layout": self.layout}

    def unlink(self):
        """Remove the file (mappings stay valid until closed)."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def close(self):
        self.arrays = {}
        try:
            self._mm.close()
        except BufferError:  # a view is still alive somewhere; the OS frees it at exit
            pass

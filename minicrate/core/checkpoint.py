"""Checkpoints: one ``.npz`` file per save, written atomically, loaded with clear errors.

A checkpoint holds

* the model parameters (``params/<key>`` entries, exact dtypes and bytes),
* the model config (a :class:`minicrate.models.classifier.CRATEConfig`) as JSON,
* ``extra``: anything else the caller wants back -- optimiser state, epoch and
  step counters, the training history.  Arrays anywhere inside ``extra`` (for
  example the optimiser's moment buffers) are stored as ``.npy`` entries, the
  rest as JSON,
* a header naming the format and its version.

**Atomic writes.**  :func:`save` writes to a temporary file in the same
directory, flushes it to disk and then ``os.replace``-s it onto the target
name.  A rename within one file system is atomic, so a reader (or a run
resumed after the process was killed mid-save) sees either the previous
checkpoint or the new one, never a half-written file.

**Clear errors.**  :func:`load` raises :class:`CheckpointError` (a
``ValueError``) for a truncated or corrupted archive, a file that is not a
minicrate checkpoint, or a newer format version, and :func:`check_config` /
:func:`check_params` say which fields or shapes differ when a checkpoint does
not match the model it is loaded into.  A crafted file gets the same: before
any array is read, each entry's declared shape and dtype must fit the bytes it
holds (a header declaring 10^11 elements is refused, not allocated), the header
must hold a dict ``config``, a list of names ``params`` and a dict ``extra``, and
:func:`check_params` refuses parameters that are not finite floating arrays.  Each
message names the file and the entry.

Parameters come back as NumPy arrays; move them to another backend with
:func:`minicrate.core.backend.host_to` (what :mod:`minicrate.training.classifier` does).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Mapping

import numpy as np

from minicrate.core.backend import to_numpy
from minicrate.core.validate import describe as _describe

FORMAT = "minicrate-checkpoint"
VERSION = 1
_HEADER = "__minicrate__"
_READ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError)


class CheckpointError(ValueError):
    """A checkpoint file cannot be used: unreadable, foreign, or mismatched."""


def _config_to_dict(config):
    if config is None:
        return None
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    if isinstance(config, dict):
        return dict(config)
    raise TypeError(
        f"config must be a dataclass (CRATEConfig) or a dict, got {type(config).__name__}"
    )


def _split_extra(value, path, arrays):
    """Replace arrays inside a nested dict/list by placeholders; collect them."""
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        name = f"extra/{len(arrays)}"
        arrays[name] = np.asarray(to_numpy(value))
        return {"__array__": name}
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise TypeError(
                    f"extra keys must be strings, got {k!r} at {'/'.join(path) or 'top'}"
                )
        return {k: _split_extra(v, path + [k], arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split_extra(v, path + [str(i)], arrays) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"extra[{'/'.join(path)}] has type {type(value).__name__}; "
        "only arrays, numbers, strings, lists and dicts can be saved"
    )


def _join_extra(value, arrays):
    if isinstance(value, dict):
        if set(value) == {"__array__"}:
            return arrays[value["__array__"]]
        return {k: _join_extra(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_join_extra(v, arrays) for v in value]
    return value


def _fspath(path):
    """``path`` as a string, or a ``TypeError`` naming the argument."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(
            f"path must be a file name (str or os.PathLike), got {type(path).__name__} {path!r}"
        ) from None
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not path:
        raise ValueError("path must be a file name such as 'checkpoint.npz', got ''")
    return path


def save(path, params, config, extra=None):
    """Write a checkpoint atomically (temporary file, fsync, ``os.replace``).

    Args:
        path: target file name (conventionally ``.npz``).
        params: ``{key: array}`` on any backend; copied to the host.
        config: the model's :class:`~minicrate.models.classifier.CRATEConfig` (or a dict).
        extra: optional nested dict of arrays, numbers, strings and lists.
    Returns:
        ``path``.
    Raises:
        CheckpointError: ``path`` is a directory (as :func:`load` does).
        TypeError: ``path``, ``params``, ``config`` or ``extra`` has the wrong type.
    """
    path = _fspath(path)
    if os.path.isdir(path) or path.endswith((os.sep, "/")):
        raise CheckpointError(
            f"path {path!r} is a directory, not a checkpoint file; give a file name such as "
            f"{os.path.join(path, 'checkpoint.npz')!r}"
        )
    if not isinstance(params, dict) or not params:
        got = "an empty dict" if isinstance(params, dict) else type(params).__name__
        raise TypeError(f"params must be a non-empty dict of arrays, got {got}")
    arrays = {}
    for key, value in params.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"parameter names must be non-empty strings, got {key!r}")
        if not (hasattr(value, "shape") and hasattr(value, "dtype")):
            raise TypeError(f"params[{key!r}] must be an array, got {_describe(value)}")
        arrays[f"params/{key}"] = np.asarray(to_numpy(value))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "config": _config_to_dict(config),
        "params": list(params),
        "extra": _split_extra(extra or {}, [], arrays),
    }
    arrays[_HEADER] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)

    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable (POSIX; harmless elsewhere)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass
    return path


def _check_entries(path):
    """Every entry of the archive is an ``.npy`` array whose header's shape and dtype fit the
    bytes it holds: a crafted header must not make NumPy allocate 10^11 elements."""
    fmt = np.lib.format
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with zf.open(info) as f:
                    try:
                        version = fmt.read_magic(f)
                        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                        shape, _, dtype = read(f)
                    except ValueError as err:
                        raise CheckpointError(f"{path!r}: entry {name!r} is not a NumPy array ({err})") from None
                    start = f.tell()
                if dtype.hasobject:
                    raise CheckpointError(f"{path!r}: entry {name!r} holds Python objects (dtype {dtype}); "
                                          "a checkpoint holds numbers only")
                declared, held = math.prod(shape) * dtype.itemsize, info.file_size - start
                if declared != held:
                    raise CheckpointError(f"{path!r}: entry {name!r} declares shape {tuple(shape)} {dtype} "
                                          f"({declared:,} bytes) but holds {held:,} bytes")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as err:
        raise CheckpointError(f"{path!r} ({os.path.getsize(path)} bytes) is not a readable minicrate "
                              f"checkpoint: it is truncated, corrupted or not an .npz archive "
                              f"({type(err).__name__}: {err})") from None


def _open(path):
    path = _fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"{path!r} is a directory, not a checkpoint file")
    if zipfile.is_zipfile(path):
        _check_entries(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except _READ_ERRORS as err:
        size = os.path.getsize(path)
        raise CheckpointError(
            f"{path!r} ({size} bytes) is not a readable minicrate checkpoint: it is truncated, "
            f"corrupted or not an .npz archive ({type(err).__name__}: {err})"
        ) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CheckpointError(
            f"{path!r} holds a single .npy array, not a minicrate checkpoint (.npz)"
        )
    if _HEADER not in archive.files:
        archive.close()
        raise CheckpointError(
            f"{path!r} is an .npz archive but not a minicrate checkpoint (no {_HEADER!r} header; "
            f"entries: {archive.files[:5]})"
        )
    try:
        meta = json.loads(bytes(archive[_HEADER]).decode("utf-8"))
    except (*_READ_ERRORS, UnicodeDecodeError) as err:
        archive.close()
        raise CheckpointError(
            f"{path!r} is truncated or corrupted: its header cannot be read ({err})"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        archive.close()
        got = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path!r} is not a minicrate checkpoint (format {got!r})")
    version = meta.get("version")
    if not isinstance(version, int) or version > VERSION:
        archive.close()
        raise CheckpointError(
            f"{path!r} has checkpoint format version {version!r}; this minicrate reads versions "
            f"up to {VERSION} (upgrade minicrate)"
        )
    for entry, kinds, what in (("config", (Mapping, type(None)), "a dict of the model's fields"),
                               ("params", list, "a list of parameter names"),
                               ("extra", Mapping, "a dict")):
        value = meta.get(entry, [] if entry == "params" else None if entry == "config" else {})
        bad = not isinstance(value, kinds) or (
            entry == "params" and not all(isinstance(k, str) and k for k in value))
        if bad:
            archive.close()
            raise CheckpointError(f"{path!r}: header entry {entry!r} must be {what}, got "
                                  f"{_describe(value)[:80]}")
    return archive, meta


def read_header(path):
    """The JSON header of a checkpoint (format, version, config, parameter names)."""
    archive, meta = _open(path)
    archive.close()
    return meta


def load(path, *, expect_config=None, config_cls=None):
    """Read a checkpoint written by :func:`save`.

    Args:
        path: the ``.npz`` file.
        expect_config: if given, the stored config must equal it
            (:func:`check_config`), else :class:`CheckpointError`.
        config_cls: the dataclass the stored config is rebuilt as (e.g. the
            classifier's ``CRATEConfig``); default: ``type(expect_config)`` when
            that is a dataclass, else the stored dict is returned as it is.  The
            checkpoint module never imports a model: the caller names the class.
    Returns:
        ``(params, config, extra)``: NumPy arrays by key, the config (a
        ``config_cls``, a dict, or ``None`` when none was stored) and the
        ``extra`` dict as saved.
    """
    archive, meta = _open(path)
    source = _fspath(path)
    try:
        with archive:
            arrays = {name: archive[name] for name in archive.files if name != _HEADER}
    except _READ_ERRORS as err:
        raise CheckpointError(
            f"{source!r} is truncated or corrupted: an array could not be read "
            f"({type(err).__name__}: {err})"
        ) from None
    missing = [k for k in meta.get("params", []) if f"params/{k}" not in arrays]
    if missing:
        raise CheckpointError(f"{source!r} lacks the arrays of parameters {missing[:5]}")
    params = {k: arrays[f"params/{k}"] for k in meta["params"]}
    try:
        extra = _join_extra(meta.get("extra", {}), arrays)
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{source!r} lacks the array {err} named in its header entry 'extra'") from None
    if config_cls is None and dataclasses.is_dataclass(expect_config):
        config_cls = type(expect_config)
    config = config_from_dict(meta.get("config"), source=source, config_cls=config_cls)
    if expect_config is not None:
        check_config(config, expect_config, source=source)
    return params, config, extra


def config_from_dict(data, *, source="checkpoint", config_cls=None):
    """A ``config_cls`` (a dataclass) from its stored dict, or a clear error.

    ``config_cls=None`` returns a copy of the dict (``None`` stays ``None``).
    """
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{source}: entry 'config' must be a dict of the model's fields, got "
                              f"{_describe(data)[:80]}")
    if config_cls is None:
        return dict(data)
    name = config_cls.__name__
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise CheckpointError(
            f"{source}: config has fields this minicrate's {name} does not know: {unknown}"
        )
    try:
        return config_cls(**data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: stored config is not a valid {name} ({err})") from None


def check_config(stored, expected, *, source="checkpoint"):
    """Raise :class:`CheckpointError` listing every field where two configs differ."""
    a, b = _config_to_dict(stored) or {}, _config_to_dict(expected) or {}
    if a == b:
        return
    diffs = [
        f"{k}: checkpoint {a.get(k)!r} vs expected {b.get(k)!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]
    raise CheckpointError(f"{source} was saved with a different model config; " + "; ".join(diffs))


def check_params(params, reference, *, source="checkpoint"):
    """Keys and shapes of ``params`` must equal those of ``reference`` (e.g. a
    fresh ``init_params(config)``), and every parameter must be a floating array of
    finite numbers (a run that went to NaN is not evaluated as if it had trained);
    raise :class:`CheckpointError` naming ``source`` and the parameter otherwise."""
    missing = sorted(set(reference) - set(params))
    unexpected = sorted(set(params) - set(reference))
    shapes = [
        f"{k}: {tuple(params[k].shape)} vs {tuple(reference[k].shape)}"
        for k in reference
        if k in params and tuple(params[k].shape) != tuple(reference[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:5]))
        raise CheckpointError(f"{source} does not match the model: " + ", ".join(parts))
    for k in reference:
        value = np.asarray(to_numpy(params[k]))
        if value.dtype.kind != "f":
            raise CheckpointError(f"{source}: parameter {k!r} must be a floating array, got "
                                  f"{_describe(value)}")
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        if bad:
            raise CheckpointError(f"{source}: parameter {k!r} holds {bad} of {value.size} values "
                                  "that are NaN or inf; the run diverged or the file is damaged")

"""Reading other libraries' pickled checkpoints without running code from them.

A pickle is a program: each ``GLOBAL`` opcode names a callable (``module.name``) that the ``REDUCE``/``NEWOBJ``/
``BUILD`` opcodes then call, so a ``.ckpt`` can name ``os.system``. taming / LDM / LlamaGen checkpoints need only
tensors, dicts and lists; Lightning adds bookkeeping (callback states, hyper-parameters, numpy scalars).

``load_pickle`` runs ``torch.load`` with an unpickler whose ``find_class`` is the only door to Python objects:

- tensors are rebuilt by our own functions (storage, offset, size, stride: bounds checked by torch's ``set_``;
  backward hooks and Python state dropped), from torch's own storages (``persistent_load`` reads the archive);
- torch dtypes, ``torch.Size``, ``collections.OrderedDict`` and a few inert builtins are themselves;
- numpy numeric scalars become Python numbers (decoded from their bytes with a whitelisted dtype);
- every other name becomes a ``Placeholder`` subclass of that name: calling it, ``__new__``, ``__setstate__``
  and ``append``/``__setitem__`` only record their arguments. No foreign constructor, ``__reduce__`` target or
  ``__setstate__`` ever runs, so a malicious object is an inert record in the result.

This holds whatever the caller's flags: ``--allow-pickle`` means permission to read pickle-format files at all.
"""

from __future__ import annotations

import collections
import pickle
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

# numpy scalar dtypes decoded to Python numbers (``numpy.dtype(str)`` of these builds no Python object).
_NUMPY_NUMERIC = {"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8", "c8", "c16",
                  "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                  "float16", "float32", "float64", "complex64", "complex128"}
_INERT_BUILTINS = {"set": set, "frozenset": frozenset, "complex": complex, "slice": slice, "bytearray": bytearray,
                   "list": list, "dict": dict, "tuple": tuple, "int": int, "float": float, "str": str, "bool": bool}


class Placeholder:
    """Stands in for an object of a class the restricted unpickler does not rebuild.

    ``module`` and ``name`` say which class the file named; ``args``, ``state``, ``items`` and ``entries``
    hold what the pickle passed to it (its constructor arguments, ``__setstate__`` state, appended items
    and set entries), themselves unpickled with the same restrictions.
    """

    module: str = ""
    name: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, kwargs=kwargs, state=None, items=[], entries={})
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def append(self, item: Any) -> None:
        self.items.append(item)

    def extend(self, items: Any) -> None:
        self.items.extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.entries[key] = value

    def __call__(self, *args: Any, **kwargs: Any) -> "Placeholder":
        # A placeholder used as a callable (e.g. a reduce target nested in another's args) stays inert.
        return type(self)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<not rebuilt: {self.module}.{self.name}>"


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> torch.Tensor:
    """torch._utils._rebuild_tensor_v2 / v3 without hooks or Python state; torch's ``set_`` checks bounds."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise pickle.UnpicklingError(f"a tensor refers to {type(storage).__name__}, not a torch storage")
    shape, strides = tuple(size), tuple(stride)
    if not isinstance(storage_offset, int) or not all(isinstance(v, int) for v in (*shape, *strides)):
        raise pickle.UnpicklingError(f"a tensor has a non-integer offset, size or stride ({size}, {stride})")
    tensor = torch.empty((0,), dtype=storage.dtype, device=storage._untyped_storage.device)
    return tensor.set_(storage._untyped_storage, storage_offset, shape, strides)


def _rebuild_parameter(data, *_ignored) -> torch.Tensor:
    """A Parameter's data tensor (requires_grad, hooks and state are training bookkeeping)."""
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError(f"a parameter wraps {type(data).__name__}, not a tensor")
    return data


class _NumpyDtype:
    """numpy.dtype as pickled: ``dtype(name, align, copy)`` then ``__setstate__((version, byteorder, ...))``."""

    def __init__(self, name: Any, *_args: Any) -> None:
        self.name, self.byteorder = name, "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "=", "|"):
            self.byteorder = state[1]


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy.core.multiarray.scalar(dtype, bytes) -> a Python number, for numeric dtypes only."""
    if isinstance(dtype, _NumpyDtype) and dtype.name in _NUMPY_NUMERIC and isinstance(data, bytes):
        value = np.frombuffer(data, dtype=np.dtype(dtype.name).newbyteorder(dtype.byteorder), count=1)
        return value[0].item()
    return _placeholder_class("numpy", "scalar")(dtype, data)


def _encode(text: Any, encoding: str = "latin1") -> bytes:
    """_codecs.encode as pickle protocol 2 uses it for bytes (latin-1 only)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) is not bytes data")
    return text.encode("latin1")


_placeholders: dict[tuple[str, str], type[Placeholder]] = {}


def _placeholder_class(module: str, name: str) -> type[Placeholder]:
    key = (str(module), str(name))
    cls = _placeholders.get(key)
    if cls is None:
        cls = type(f"Unpickled_{key[1]}"[:100], (Placeholder,), {"module": key[0], "name": key[1]})
        _placeholders[key] = cls
    return cls


def _allowed(module: str, name: str) -> Any:
    """What a ``GLOBAL module name`` opcode gets: a safe object, or None for a placeholder."""
    if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3"):
        return _rebuild_tensor
    if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
        return _rebuild_parameter
    if module == "torch":
        value = getattr(torch, name, None) if isinstance(name, str) else None
        if isinstance(value, torch.dtype) or value is torch.Size or value is torch.device:
            return value
    if module == "collections" and name == "OrderedDict":
        return collections.OrderedDict
    if module == "builtins" and name in _INERT_BUILTINS:
        return _INERT_BUILTINS[name]
    if module == "_codecs" and name == "encode":
        return _encode
    if module == "numpy" and name == "dtype":
        return _NumpyDtype
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
        return _numpy_scalar
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose globals are ``_allowed`` objects or inert ``Placeholder`` classes."""

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles name Python 2's modules; pickle's own find_class maps them the same way.
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        value = _allowed(module, name)
        return value if value is not None else _placeholder_class(module, name)


def _load(file, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


# What torch.load calls as ``pickle_module``: torch subclasses our Unpickler (adding only its storage loader,
# ``persistent_load``, and torch storage names) and calls ``load`` for the legacy format's header records.
pickle_module = types.SimpleNamespace(Unpickler=RestrictedUnpickler, load=_load, __name__=__name__)


def load_pickle(path: str | Path) -> Any:
    """The object in a ``torch.save`` file, unpickled with ``RestrictedUnpickler`` (see the module docstring).

    Raises whatever torch or pickle raise for a file that is not a readable checkpoint; the caller names it.
    """
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=pickle_module)


def placeholders_in(obj: Any, limit: int = 100_000) -> list[str]:
    """Sorted ``module.name`` of the classes ``obj`` holds as placeholders (to report what was not rebuilt)."""
    found: set[str] = set()
    stack, seen = [obj], 0
    while stack and seen < limit:
        item = stack.pop()
        seen += 1
        if isinstance(item, Placeholder):
            found.add(f"{item.module}.{item.name}")
            stack.extend([*item.args, *item.kwargs.values(), item.state, *item.items, *item.entries.values()])
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
    return sorted(found)


__all__ = ["Placeholder", "RestrictedUnpickler", "load_pickle", "placeholders_in", "pickle_module"]

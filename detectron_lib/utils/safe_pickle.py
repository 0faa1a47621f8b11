"""A restricted unpickler for data files: Detectron / detectron2 ``.pkl`` weights and proposals.

``pickle.load`` calls whatever a file names, so a file can run code while it loads. ``load``
builds only data: numpy arrays and scalars of non-object dtypes, numbers, strings, bytes,
None, booleans, lists, tuples, sets, dicts and ``collections.OrderedDict``. Any other global
in the file (a function, a class), and any numpy array of Python objects, raises
``RefusedObject`` naming it, before anything of it is called. Python 2 pickles (Detectron's)
are read with encoding='latin1', as numpy needs.

What each admitted global may do is checked, not only its name:
  numpy.[_]core.multiarray._reconstruct  only an empty ``numpy.ndarray`` (no subclass)
  numpy.ndarray                          a token that only ``_reconstruct`` accepts
  numpy.dtype                            a fresh (never a shared, built-in) dtype; no object
                                         dtypes; its pickled state may not make it a
                                         structured, sub-array or object dtype
  numpy.[_]core.multiarray.scalar        a scalar of such a dtype from bytes
  numpy.[_]core.numeric._frombuffer      an array of such a dtype from a buffer (protocol 5)
  _codecs.encode                         text to latin-1 bytes (protocol-2 pickles of bytes)
  collections.OrderedDict                an ordered dict
The pickle BUILD instruction (``__setstate__``) is admitted only on arrays and dtypes, with
their state checked: an array's data must be bytes, not a list of objects. numpy arrays of
dtype object would hand the caller arbitrary objects, and a dtype whose pickled flags claim
Python objects would make numpy read plain bytes as object pointers, so both are refused.
The result is checked once more for arrays with objects.
"""
import codecs
import collections
import pickle

import numpy as np

try:  # numpy >= 2 (numpy.core is a deprecated alias there)
    from numpy._core import multiarray as _multiarray
except ImportError:  # numpy 1.x
    from numpy.core import multiarray as _multiarray

__all__ = ["RefusedObject", "load", "refusal_message"]


class RefusedObject(pickle.UnpicklingError):
    """A pickle holds something that is not data; ``what`` names it (e.g. 'posix.system')."""

    def __init__(self, what):
        super().__init__(f"refused {what}: only data is loaded")
        self.what = what


def refusal_message(path, what, kind="file"):
    """The one message for a refused file: names the file and what in it was refused."""
    return (f"{kind} '{path}' is refused: it holds {what}, which is not data, and loading it "
            "could run code. Only data is loaded from files (arrays, tensors, numbers, strings, "
            "lists, tuples, dicts); re-save it holding only those")


class _NdarrayToken:
    """What the global numpy.ndarray loads as: an argument for ``_reconstruct``, nothing else."""

    __slots__ = ()

    def __reduce__(self):
        raise TypeError("not picklable")


_NDARRAY = _NdarrayToken()


def _checked_dtype(dtype, what="numpy dtype"):
    if not isinstance(dtype, np.dtype):
        raise RefusedObject(f"a {what} argument of type {type(dtype).__name__}")
    if dtype.hasobject:
        raise RefusedObject(f"a numpy array or scalar of dtype {dtype} (Python objects)")
    return dtype


def _dtype(obj, align=False, copy=False):
    if not isinstance(obj, (str, bytes)):
        raise RefusedObject(f"numpy.dtype of a {type(obj).__name__}")
    # always a copy: BUILD then sets the state of this object, never of numpy's shared dtypes
    return _checked_dtype(np.dtype(obj.decode("latin1") if isinstance(obj, bytes) else obj,
                                   bool(align), True))


def _reconstruct(subtype, shape, typecode):
    if subtype is not _NDARRAY:
        raise RefusedObject(f"numpy _reconstruct of {type(subtype).__name__} (only numpy.ndarray)")
    if typecode in ("O", b"O"):
        raise RefusedObject("a numpy array of dtype object (Python objects)")
    return _multiarray._reconstruct(np.ndarray, shape, typecode)


def _scalar(dtype, data=None):
    _checked_dtype(dtype)
    if not isinstance(data, (bytes, str)):
        raise RefusedObject(f"a numpy scalar made from a {type(data).__name__}")
    return _multiarray.scalar(dtype, data)


def _frombuffer(buf, dtype, shape, order):
    _checked_dtype(dtype)
    if not isinstance(buf, (bytes, bytearray, pickle.PickleBuffer)):
        raise RefusedObject(f"a numpy buffer of type {type(buf).__name__}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


def _encode(text, encoding="utf-8"):
    if not isinstance(text, str) or not isinstance(encoding, str) or \
            codecs.lookup(encoding).name != "iso8859-1":
        raise RefusedObject(f"_codecs.encode with encoding {encoding!r} (only latin-1)")
    return text.encode("latin1")


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _encode,
    ("builtins", "set"): set, ("__builtin__", "set"): set,
    ("builtins", "frozenset"): frozenset, ("__builtin__", "frozenset"): frozenset,
}
for _core in ("numpy.core", "numpy._core"):
    _ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_core}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_core}.numeric", "_frombuffer")] = _frombuffer


def _check_dtype_state(dtype, state):
    """Refuse a dtype state that is not exactly the state of a plain (non-object) dtype."""
    if not isinstance(state, tuple) or len(state) not in (8, 9) or any(
            part is not None for part in state[2:5]):
        raise RefusedObject("a structured or sub-array numpy dtype")
    scratch = np.dtype(dtype, False, True)
    try:
        scratch.__setstate__(state)
        canonical = np.dtype(scratch.str)
    except Exception:  # a state numpy cannot even describe
        raise RefusedObject(f"a malformed numpy dtype state {state!r}") from None
    if scratch.hasobject or scratch.flags != canonical.flags or scratch != canonical or \
            scratch.itemsize != canonical.itemsize:
        raise RefusedObject(f"a numpy dtype state claiming Python objects or another layout "
                            f"({state!r})")


def _check_array_state(state):
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise RefusedObject("a malformed numpy array state")
    dtype, data = state[-3], state[-1]
    _checked_dtype(dtype)
    if not isinstance(data, (bytes, bytearray, str)):
        raise RefusedObject(f"a numpy array whose data is a {type(data).__name__} (Python objects)")


class _Unpickler(pickle._Unpickler):
    """The pure-Python unpickler, so that BUILD can be checked before it runs."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            raise RefusedObject(f"{module}.{name}") from None

    def load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if type(inst) is np.ndarray:
            _check_array_state(state)
        elif isinstance(inst, np.dtype):
            _check_dtype_state(inst, state)
        else:
            raise RefusedObject(f"setting the state of a {type(inst).__name__}")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def persistent_load(self, pid):
        raise RefusedObject(f"a persistent id {pid!r}")


def load(file, encoding="latin1"):
    """The data pickled in ``file`` (a binary file object); RefusedObject for anything else."""
    obj = _Unpickler(file, encoding=encoding).load()
    _check_no_objects(obj)
    return obj


def _check_no_objects(obj):
    """Refuse any numpy array or scalar of an object dtype left in the result."""
    stack, seen = [obj], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, (np.ndarray, np.generic)):
            _checked_dtype(item.dtype)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)

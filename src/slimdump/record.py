"""Record classes: ``@record`` is the part of ``@dataclass`` slimdump uses.

A class decorated with :func:`record` (or ``record(frozen=True)``) gets, from
its annotated attributes in order (base classes' first):

- ``__init__`` taking them positionally or by name, with the defaults of the
  class body or :func:`field`\\ ``(default_factory=...)``;
- ``__repr__`` and ``__eq__`` (same class, equal fields), unless the class
  defines its own;
- when frozen: attributes that cannot be set or deleted after ``__init__``
  (:class:`FrozenInstanceError`) and a ``__hash__`` of the fields; otherwise
  ``__hash__`` is None, as for a dataclass with ``eq``.

:func:`replace` copies a record with some fields changed.

Why not :mod:`dataclasses`: the capture path is a short-lived process that
must start as fast as makedumpfile.  Importing ``dataclasses`` loads
``inspect`` (and with it ``ast``, ``dis``, ``tokenize``), and building each
class costs about half a millisecond of introspection; for the thirty-odd
classes a capture imports that was 25 ms, an eighth of a whole
``capture -l -d 31`` of a 4 GiB guest (measured with ``python -c "import
slimdump.cli, slimdump.capture, slimdump.filtered"``: 71 ms, 45 ms without
the dataclass cost).  Here one small ``exec`` builds each ``__init__``; the
rest is shared code.
"""

from __future__ import annotations

from collections.abc import Callable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (3 ms at start-up)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

_MISSING: Any = object()
_FIELDS = "__record_fields__"


class FrozenInstanceError(AttributeError):
    """An attribute of a frozen record was set or deleted."""


class Field:
    """A field default computed per instance (``field(default_factory=list)``)."""

    __slots__ = ("default_factory",)

    def __init__(self, default_factory: Callable[[], Any]) -> None:
        self.default_factory = default_factory


def field(*, default_factory: Callable[[], Any]) -> Any:
    """A default made fresh for each instance, as ``dataclasses.field``."""
    return Field(default_factory)


def _repr(self: Any) -> str:
    values = ", ".join(f"{name}={getattr(self, name)!r}" for name in getattr(self, _FIELDS))
    return f"{type(self).__qualname__}({values})"


def _values(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, name) for name in getattr(self, _FIELDS))


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _build_init(cls: type, fields: dict[str, Any], frozen: bool) -> Callable[..., None]:
    """``__init__(self, <fields>)`` for ``fields`` (name -> default, Field
    or _MISSING), from one generated function."""
    namespace: dict[str, Any] = {"_MISSING": _MISSING, "_set": object.__setattr__}
    params, body = [], []
    for i, (name, default) in enumerate(fields.items()):
        if default is _MISSING:
            params.append(name)
            value = name
        elif isinstance(default, Field):
            namespace[f"_factory{i}"] = default.default_factory
            params.append(f"{name}=_MISSING")
            value = f"_factory{i}() if {name} is _MISSING else {name}"
        else:
            namespace[f"_default{i}"] = default
            params.append(f"{name}=_default{i}")
            value = name
        body.append(f"_set(self, {name!r}, {value})" if frozen else f"self.{name} = {value}")
    source = f"def __init__(self, {', '.join(params)}):\n    " + "\n    ".join(body or ["pass"])
    exec(source, namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def record(cls: type[T] | None = None, /, *, frozen: bool = False) -> Any:
    """Make ``cls`` a record (see the module docstring); usable bare or
    with arguments, like ``@dataclass``."""

    def wrap(cls: type[T]) -> type[T]:
        fields: dict[str, Any] = {}
        for base in reversed(cls.__mro__[1:]):
            fields.update(getattr(base, _FIELDS, {}))
        # the class's own annotations, in order (not inspect.get_annotations:
        # importing inspect is what this module avoids)
        for name in cls.__dict__.get("__annotations__", {}):  # noqa: RUF063
            default = cls.__dict__.get(name, _MISSING)
            fields[name] = default
            if isinstance(default, Field):
                delattr(cls, name)
        setattr(cls, _FIELDS, fields)
        cls.__init__ = _build_init(cls, fields, frozen)  # type: ignore[misc]
        own = cls.__dict__
        if "__repr__" not in own:
            cls.__repr__ = _repr  # type: ignore[assignment]
        if "__eq__" not in own:
            cls.__eq__ = _eq  # type: ignore[assignment]
        if frozen:
            cls.__setattr__ = _frozen_setattr  # type: ignore[assignment]
            cls.__delattr__ = _frozen_delattr  # type: ignore[assignment]
            if "__hash__" not in own:
                cls.__hash__ = _hash  # type: ignore[assignment]
        elif "__hash__" not in own:
            cls.__hash__ = None  # type: ignore[assignment]
        return cls

    return wrap if cls is None else wrap(cls)


def replace(obj: T, **changes: Any) -> T:
    """A copy of the record ``obj`` with ``changes`` applied (TypeError for
    a name that is not a field)."""
    fields = getattr(type(obj), _FIELDS, None)
    if fields is None:
        raise TypeError(f"replace() needs a record, not {type(obj).__name__}")
    for name in fields:
        if name not in changes:
            changes[name] = getattr(obj, name)
    return type(obj)(**changes)  # type: ignore[call-arg]

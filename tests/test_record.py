"""slimdump.record against dataclasses, the behaviour it stands in for:
the same constructor, equality, hashing, repr, immutability and replace()
on the same class bodies."""

from __future__ import annotations

import dataclasses

import pytest

from slimdump.record import FrozenInstanceError, field, record, replace


def make(decorate, field_fn, frozen: bool) -> type:
    class Point:
        x: int
        y: int = 2
        tags: list[str] = field_fn(default_factory=list)

        @property
        def total(self) -> int:
            return self.x + self.y

    return decorate(frozen=frozen)(Point)


@pytest.mark.parametrize("frozen", [False, True])
def test_same_behaviour_as_dataclass(frozen: bool) -> None:
    ours = make(record, field, frozen)
    theirs = make(dataclasses.dataclass, dataclasses.field, frozen)
    for args, kwargs in [((1,), {}), ((1, 5), {}), ((), {"x": 3, "tags": ["a"]}),
                         ((1,), {"y": 7})]:
        a, b = ours(*args, **kwargs), theirs(*args, **kwargs)
        assert (a.x, a.y, a.tags, a.total) == (b.x, b.y, b.tags, b.total)
        assert repr(a).replace("make.<locals>.", "") == repr(b).replace("make.<locals>.", "")
        assert a == ours(*args, **kwargs) and a != ours(99)
        assert a != b                                  # another class: not equal
        assert (replace(a, y=9).y, replace(a, y=9).x) == (9, a.x)
        assert replace(a) == a and replace(a) is not a
    assert ours(1).tags is not ours(1).tags            # a fresh default each time
    for name, value in (("x", 1), ("y", 2)):
        assert not hasattr(ours, "tags") and getattr(ours, name, value) == value
    for args in [(), (1, 2, [], 4)]:
        with pytest.raises(TypeError):
            ours(*args)
    with pytest.raises(TypeError):
        replace(ours(1), z=3)
    with pytest.raises(TypeError):
        replace(object())
    p = ours(1)
    if frozen:
        assert hash(ours(1, 2, ())) == hash(ours(1, tags=())) != hash(ours(2, tags=()))
        with pytest.raises(TypeError):                 # a list field, as in a dataclass
            hash(p)
        with pytest.raises(FrozenInstanceError):
            p.x = 5
        with pytest.raises(AttributeError):
            del p.y
    else:
        p.x = 5
        assert p.x == 5
        with pytest.raises(TypeError):
            hash(p)


def test_inheritance_and_own_methods() -> None:
    @record
    class Base:
        a: int

    @record
    class Child(Base):
        b: str = "b"

        def __repr__(self) -> str:
            return "child"

    c = Child(1)
    assert (c.a, c.b, repr(c)) == (1, "b", "child")
    assert replace(c, a=4) == Child(4, "b")

"""A timm-style registry: a decorator fills a dict, ``create_*`` builds by name.

Shared by ``encoders``, ``fusion`` and the domain-adaptation objectives."""

from __future__ import annotations

import difflib
import fnmatch
import functools
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to builders; shared by ``encoders`` and ``fusion``.

    ``lazy`` maps the names a package's own modules register to those modules: they are
    listed without importing anything and imported on first use, as transformers resolves
    its models, so ``multimodal list`` never loads torch.
    """

    def __init__(self, kind: str, lazy: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}
        self._lazy = dict(lazy or {})

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(builder: Callable[..., T]) -> Callable[..., T]:
            key = name or builder.__name__
            taken = key in self._lazy and getattr(builder, "__module__", None) != self._lazy[key]
            if key in self._builders or taken:  # a built-in name, imported or not yet
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._builders[key] = builder
            if isinstance(builder, type):
                builder.registry_name = key  # lets a built object say how to rebuild it
            return builder

        return decorator

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in {*self._builders, *self._lazy} if fnmatch.fnmatch(n, pattern))

    def names(self) -> list[str]:
        """Every registered name, built in or added, sorted (nothing is imported)."""
        return self.list()

    def __contains__(self, name: object) -> bool:
        return name in self._builders or name in self._lazy

    def accepted_kwargs(self, name: str, ignore: Iterable[str] = ()) -> set[str]:
        """The keyword arguments builder ``name`` takes (minus ``ignore``)."""
        return accepted_kwargs(self.get(name)) - set(ignore)

    def get(self, name: str) -> Callable[..., T]:
        """The builder registered as ``name`` (its module imported on first use); an
        unknown name is a ValueError naming the close matches."""
        if name not in self._builders and name in self._lazy:
            importlib.import_module(self._lazy[name])  # its decorator registers the name
        if name not in self._builders:
            close = difflib.get_close_matches(name, self.list(), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(
                f"Unknown {self.kind} {name!r}.{hint} Registered: {', '.join(self.list())}"
            )
        return self._builders[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        # None means "use the builder's default", as in timm.create_model.
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        obj = self.get(name)(*args, **kwargs)
        if not hasattr(obj, "init_kwargs"):
            obj.init_kwargs = kwargs
        return obj


def accepted_kwargs(builder: Callable[..., Any], follow_bases: bool = True) -> set[str]:
    """The keyword arguments ``builder`` takes: its signature's named parameters, and where a
    class forwards ``**kwargs`` to its bases (``follow_bases``), theirs too."""
    return set(_accepted_kwargs(builder, follow_bases))


@functools.lru_cache(maxsize=1024)  # a config names the same builders for every unit and seed
def _accepted_kwargs(builder: Callable[..., Any], follow_bases: bool) -> frozenset[str]:
    classes = [builder]
    params = inspect.signature(builder).parameters
    if (
        follow_bases
        and isinstance(builder, type)
        and any(p.kind == p.VAR_KEYWORD for p in params.values())
    ):
        classes = list(inspect.getmro(builder))
    names: set[str] = set()
    for each in classes:
        for name, p in inspect.signature(each).parameters.items():
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name != "self":
                names.add(name)
    return frozenset(names)


def lazy_attributes(package: str, names: Mapping[str, str],
                    namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:  # fmt: skip
    """A package's module ``__getattr__`` and ``__dir__`` (PEP 562) that import the module
    named in ``names`` (public name -> relative module) on a name's first use and keep the
    value in ``namespace``, so importing the package loads none of them."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__

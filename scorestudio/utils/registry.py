"""Name → class registry, so configs can say `guidance_type: sds` instead of an import path.

Modules register themselves with ``@register("name")``; configs and systems look them up with
``find("name")``. Modules live in subpackages that are imported lazily (heavy optional
dependencies), so ``find`` imports the known module of a name on first use.
"""

from __future__ import annotations

import importlib

from scorestudio.utils.config import did_you_mean

_REGISTRY: dict[str, type] = {}
_KINDS: dict[str, str] = {}

# Where each registered name is defined, so `find` can import its module on demand
# without `import scorestudio` pulling in diffusers, nerfacc, ... up front.
_LAZY_MODULES: dict[str, str] = {}


class RegistryError(KeyError):
    """Unknown or duplicate module name. Subclasses KeyError; prints its message unquoted."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(name: str):
    """Class decorator that makes ``cls`` findable as ``name``.

    The name's kind is the class's ``registry_kind`` (a base class such as the generators' sets
    it, so modules outside the package register into it too), else its scorestudio subpackage.
    Raises ``RegistryError`` if ``name`` is already taken by a different class.
    """

    def decorator(cls: type) -> type:
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise RegistryError(
                f"module name {name!r} is already registered by "
                f"{existing.__module__}.{existing.__qualname__}; pick another name for "
                f"{cls.__module__}.{cls.__qualname__}"
            )
        _REGISTRY[name] = cls
        _KINDS[name] = getattr(cls, "registry_kind", None) or _kind_of(cls.__module__)
        cls.registered_name = name
        return cls

    return decorator


def _kind_of(module: str) -> str:
    """The kind of a module is its scorestudio subpackage: 'guidance', 'systems', ..."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "scorestudio" else "other"


def declare_lazy(module: str, *names: str) -> None:
    """Tell the registry that ``names`` are registered when ``module`` is imported."""
    for name in names:
        _LAZY_MODULES[name] = module
        _KINDS.setdefault(name, _kind_of(module))


def known_names(kind: str | None = None) -> list[str]:
    """Registered (or lazily declared) names, optionally only those of one kind."""
    names = set(_REGISTRY) | set(_LAZY_MODULES)
    return sorted(n for n in names if kind is None or _KINDS.get(n) == kind)


def find(name: str, kind: str | None = None) -> type:
    """Return the class registered as ``name``.

    ``kind`` (a subpackage name such as 'guidance') narrows the names listed in the error.
    Unknown names raise ``RegistryError`` listing close matches and the known names.
    """
    if name not in _REGISTRY and name in _LAZY_MODULES:
        importlib.import_module(_LAZY_MODULES[name])
    if name in _REGISTRY and (kind is None or _KINDS[name] == kind):
        return _REGISTRY[name]
    names = known_names(kind)
    what = f"{kind} module" if kind else "module"
    raise RegistryError(f"unknown {what} name {name!r}.{did_you_mean(name, names)} Known names: {', '.join(names)}")

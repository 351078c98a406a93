"""Domain spec strings and the one function that parses them.

Grammar (modelled on timm's ``parse_model_name``: a known prefix, then an opaque id)::

    spec     := base (":" suffix)*
    base     := NAME                      registered domain (digits, digits-m, fashion, fashion-m, ...)
              | ALIAS                     hub alias (mnist, usps, svhn, mnist-m, cifar10, stl10)
              | "hf:" REPO_ID [":" CONFIG]
              | "folder:" PATH            PATH may contain ':'
    suffix   := a registered domain transform (inv, wm, ...)

Suffixes are peeled off the right end while the last ``:``-separated token is a registered suffix, so
``folder:/x/y:inv`` is the folder ``/x/y`` inverted, while ``folder:/x:y`` is the folder ``/x:y``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from ..errors import ConfigError, UnknownDomainError, UnknownNameError
from .registry import HF_ALIASES, SPEC_PREFIXES, is_domain_transform, list_domain_transforms, list_domains

__all__ = ["DomainSpec", "parse_domain_spec"]

DomainKind = Literal["builtin", "hf", "folder"]

_FORMS = "a registered name, a hub alias, 'hf:<repo_id>[:<config>]' or 'folder:<path>'"


@dataclass(frozen=True)
class DomainSpec:
    """A parsed domain spec.

    Attributes:
        kind: ``"builtin"`` (registered name), ``"hf"`` (hub dataset, aliases resolved) or ``"folder"``.
        name: Registered name, hub repo id (or local dataset directory), or folder path.
        config: Hub dataset config (``cropped_digits``), else None.
        suffixes: Transform suffixes in application order (``("inv", "wm")``).
    """

    kind: DomainKind
    name: str
    config: str | None = None
    suffixes: tuple[str, ...] = ()

    @property
    def base(self) -> str:
        """The canonical spec without suffixes (aliases expanded): ``hf:ufldl-stanford/svhn:cropped_digits``."""
        if self.kind == "builtin":
            return self.name
        if self.kind == "folder":
            return f"folder:{self.name}"
        return f"hf:{self.name}" + (f":{self.config}" if self.config else "")

    def __str__(self) -> str:
        return self.base + "".join(f":{s}" for s in self.suffixes)


def _known_names() -> list[str]:
    return list_domains() + sorted(HF_ALIASES)


def _looks_like_path(text: str) -> bool:
    return text in (".", "..") or text.startswith(("/", ".", "~")) or "/" in text or "\\" in text


def _path_error(spec: str, body: str) -> UnknownDomainError:
    hint = ""
    if not body.startswith(("/", ".", "~")) and body.count("/") == 1 and "\\" not in body:
        hint = f", or 'hf:{body}' for a Hugging Face Hub dataset"
    return UnknownDomainError(
        f"domain spec {spec!r} looks like a path but has no prefix; write 'folder:{body}' to load an image folder"
        f"{hint}, or use a registered domain name: {_known_names()}"
    )


def _unknown_suffixes(spec: str, tokens: list[str]) -> UnknownNameError:
    bad = [t for t in tokens if not is_domain_transform(t)] or tokens
    what = f"unknown suffix {bad[0]!r}" if bad[0] else "empty suffix (a stray ':')"
    return UnknownNameError(f"domain spec {spec!r}: {what}; registered suffixes: {list_domain_transforms()}")


def parse_domain_spec(spec: str) -> DomainSpec:
    """Parse and validate a domain spec string, without loading anything.

    Args:
        spec: ``digits``, ``digits-m:wm``, ``svhn``, ``hf:uoft-cs/cifar10``, ``hf:ufldl-stanford/svhn:cropped_digits``,
            ``folder:/data/pets:inv``, ...

    Returns:
        The :class:`DomainSpec`; hub aliases come back as ``kind="hf"`` with their repo id and config.

    Raises:
        TypeError: ``spec`` is not a str.
        ConfigError: empty spec, or empty repo id / config / path after a prefix.
        UnknownDomainError: unknown name (the message lists registered names and aliases), or a bare path such as
            ``./data/x`` (the message offers ``folder:<path>`` or a registered name).
        UnknownNameError: a suffix is not a registered domain transform (the message lists them).

    Example:
        >>> parse_domain_spec("folder:/data/x:inv")
        DomainSpec(kind='folder', name='/data/x', config=None, suffixes=('inv',))
    """
    if not isinstance(spec, str):
        raise TypeError(f"domain spec must be a str, got {type(spec).__name__}: {spec!r}")
    if not spec.strip():
        raise ConfigError(f"domain spec is empty; expected {_FORMS}")

    body, suffixes = spec, []
    while True:
        head, sep, tail = body.rpartition(":")
        if not sep or not head or not is_domain_transform(tail):
            break
        suffixes.insert(0, tail)
        body = head
    suffixes_t = tuple(suffixes)

    prefix, sep, rest = body.partition(":")
    if sep and prefix == "hf":
        repo_id, _, config_part = rest.partition(":")
        if not repo_id.strip():
            raise ConfigError(f"domain spec {spec!r}: empty repo id; expected 'hf:<repo_id>[:<config>]'")
        config = None
        if config_part or rest.endswith(":"):
            config, _, extra = config_part.partition(":")
            if not config:
                raise ConfigError(f"domain spec {spec!r}: empty config after the repo id; drop the trailing ':'")
            if extra:
                raise _unknown_suffixes(spec, extra.split(":"))
        return DomainSpec("hf", repo_id, config, suffixes_t)
    if sep and prefix == "folder":
        if not rest:
            raise ConfigError(f"domain spec {spec!r}: empty path; expected 'folder:<path>'")
        return DomainSpec("folder", rest, None, suffixes_t)

    if _looks_like_path(body):
        raise _path_error(spec, body)
    name = prefix
    if name in list_domains():
        parsed = DomainSpec("builtin", name, None, suffixes_t)
    elif name in HF_ALIASES:
        repo_id, config = HF_ALIASES[name]
        parsed = DomainSpec("hf", repo_id, config, suffixes_t)
    else:
        close = difflib.get_close_matches(name, _known_names(), n=1)
        did_you_mean = f" (did you mean {close[0]!r}?)" if close else ""
        prefix_hint = f"; {name!r} is a prefix, write '{name}:<...>'" if name in SPEC_PREFIXES else ""
        raise UnknownDomainError(
            f"unknown domain {name!r} in spec {spec!r}{did_you_mean}{prefix_hint}; registered domains: "
            f"{list_domains()}; hub aliases: {sorted(HF_ALIASES)}; or use 'hf:<repo_id>[:<config>]' / 'folder:<path>'"
        )
    if sep:
        raise _unknown_suffixes(spec, rest.split(":"))
    return parsed

"""Reading typed values out of the parsed YAML of the config file (``homeserver.config``).

A ``ConfigReader`` wraps one mapping of the file (the top level, a section, a list item) and
records a problem, named by the key's full path (``rate_limits.login_per_ip.per_second``,
``listeners[0].port``), for every value of the wrong type or out of range. Each reader also
remembers which keys were read: once the whole file has been parsed, ``unknown_keys`` reports
every key no reader asked for, at any depth, so a typo is never silently replaced by a
default.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
                   "w": 604_800_000, "y": 31_536_000_000}


class ConfigReader:
    """Reads one mapping of the config file; see the module docstring.

    Args:
        data: the mapping.
        problems: where problems are appended (shared by every reader of one file).
        prefix: the path of this mapping, ending in a dot (empty at the top level).
    """

    def __init__(self, data: dict[Any, Any], problems: list[str], prefix: str = "",
                 *, _family: list[ConfigReader] | None = None) -> None:
        self._data = data
        self._problems = problems
        self._prefix = prefix
        self._read: set[Any] = set()
        # Every reader made from this one (sections, list items), for ``unknown_keys``.
        self._family: list[ConfigReader] = _family if _family is not None else []
        self._family.append(self)

    def key(self, name: str) -> str:
        """The full path of ``name`` in the file."""
        return f"{self._prefix}{name}"

    def problem(self, name: str, text: str) -> None:
        self._problems.append(f"{self.key(name)}: {text}")

    def has(self, name: str) -> bool:
        """Whether the key is present (reading it: a present key is not unknown)."""
        self._read.add(name)
        return name in self._data

    def raw(self, name: str, default: Any = None) -> Any:
        """The value as the YAML gave it, unchecked."""
        self._read.add(name)
        return self._data.get(name, default)

    def keys(self) -> Iterator[Any]:
        """Every key of a free-form mapping (each counts as read)."""
        self._read.update(self._data)
        return iter(list(self._data))

    def _child(self, data: dict[Any, Any], path: str) -> ConfigReader:
        return ConfigReader(data, self._problems, f"{path}.", _family=self._family)

    def section(self, name: str) -> ConfigReader:
        """A nested mapping (absent or null: empty)."""
        value = self.raw(name)
        if value is None:
            value = {}
        elif not isinstance(value, dict):
            self.problem(name, "must be a mapping")
            value = {}
        return self._child(value, self.key(name))

    def items(self, name: str) -> list[ConfigReader]:
        """A list of mappings (``listeners``): a reader per item, named ``name[i]``; an item
        that is no mapping is a problem and left out."""
        readers = []
        for i, item in enumerate(self.get(name, list, [])):
            if not isinstance(item, dict):
                self.problem(f"{name}[{i}]", "must be a mapping")
                continue
            readers.append(self._child(item, self.key(f"{name}[{i}]")))
        return readers

    def get(self, name: str, kind: type[T] | tuple[type, ...], default: T) -> T:
        """The value, which must be of type ``kind`` (a problem and ``default`` otherwise);
        absent: ``default``."""
        value = self.raw(name, default)
        if value is None and default is None:
            return default
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a YAML `true` is no port number.
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            self.problem(name, f"must be {names}, not {type(value).__name__}")
            return default
        return value  # type: ignore[no-any-return]

    def positive(self, name: str, default: int) -> int:
        value = self.get(name, int, default)
        if value <= 0:
            self.problem(name, "must be a positive integer")
            return default
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str, *,
               upper: bool = False) -> str:
        """A string out of ``choices`` (in upper case with ``upper``: ``debug`` is ``DEBUG``);
        absent: ``default``."""
        value = self.raw(name, default)
        if isinstance(value, str) and upper:
            value = value.upper()
        if value not in choices:
            self.problem(name, f"must be one of {', '.join(choices)}")
            return default
        return str(value)

    def path(self, name: str, base: Path, default: Path | None) -> Path | None:
        """A file path; a relative one is relative to ``base`` (the config file's directory)."""
        value = self.get(name, str, str(default) if default is not None else None)
        if value is None:
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (base / path)

    def networks(self, name: str, default: tuple[str, ...]) -> tuple[IpNetwork, ...]:
        values = self.get(name, list, list(default))
        out = []
        for i, value in enumerate(values):
            try:
                out.append(ipaddress.ip_network(str(value), strict=False))
            except ValueError:
                self.problem(f"{name}[{i}]", f"not an IP range: {value!r}")
        return tuple(out)

    def duration_ms(self, name: str, default: int | None) -> int | None:
        """A duration as Synapse writes them: milliseconds, or a number with a unit (``500ms``,
        ``30s``, ``5m``, ``1h``, ``7d``, ``1w``, ``1y``); null means never."""
        if not self.has(name):
            return default
        value = self._data[name]
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h|d|w|y)\s*", value)
            if match:
                return int(match.group(1)) * _DURATION_UNITS[match.group(2)]
        self.problem(name, "must be a duration such as 7d, 12h, 30s or milliseconds, or null")
        return default

    def report_unknown_keys(self) -> None:
        """A problem for every key that no reader of this file has read, at any depth."""
        for reader in self._family:
            for key in reader._data:
                if key not in reader._read:
                    reader.problem(str(key), "unknown key")

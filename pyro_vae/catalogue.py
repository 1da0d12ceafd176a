"""The options of ``pyro-vae fit`` as plain data, so that ``fit --help`` imports no torch.

The options of ``fit`` are derived from the declarations of the parts and of the configuration
sections (:mod:`pyro_vae.registry`, :mod:`pyro_vae.config`). The built-in parts are
``nn.Module`` classes, so reading their declarations imports torch and Pyro (about 3–7 s on a
2-core machine). :func:`derive` reads them and returns one plain dictionary per click option;
``fit_options.json`` beside this module holds what it returned for the built-in parts, and the
command line builds ``fit``'s options from that file. A test compares the file with
:func:`derive`, so it cannot fall behind the declarations: after adding or changing a part,
regenerate it with

    python -m pyro_vae.catalogue

This module imports neither torch nor Pyro unless :func:`derive` is called.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: The derived options of the built-in parts, written by :func:`write`.
PATH = Path(__file__).with_name("fit_options.json")
_TYPES = {int: "int", float: "float", str: "str", bool: "bool"}
_KIND_HELP = {"arch": "Encoder and decoder networks.", "prior": "The prior p(z).",
              "likelihood": "The likelihood p(x|z).",
              "guide": "The variational family q(z|x) of the guide."}


def _spec(name: str, declared, default: Any, default_text: str = "") -> dict[str, Any]:
    allowed = declared.allowed()
    return {"name": name, "flag": declared.flag or name.replace("_", "-"),
            "type": _TYPES[declared.type], "choices": list(allowed) if allowed else None,
            "default": list(default) if isinstance(default, tuple) else default,
            "multiple": declared.multiple,
            "show_default": default is not None and not declared.multiple,
            "metavar": declared.metavar, "help": f"{declared.help} {default_text}".strip()}


def derive() -> list[dict[str, Any]]:
    """One dictionary per option of ``fit``, in ``--help`` order, from the live declarations.

    Keys: ``name`` (the Python name), ``flag`` (without ``--``), ``type`` (``"int"``,
    ``"float"``, ``"str"`` or ``"bool"``), ``choices`` (list or None), ``default``,
    ``multiple``, ``show_default``, ``metavar`` and ``help``. Imports the parts (torch, Pyro).
    """
    from .config import (PART_KINDS, DataConfig, ModelConfig, TrainConfig, part_option_flags,
                         section_options)

    specs = [_spec(n, o, o.default) for n, o in section_options(DataConfig).items()]
    for kind, registry in PART_KINDS.items():
        text = _KIND_HELP[kind] + " " + ", ".join(
            f"{n} ({c.summary})" if c.summary else n for n, c in registry.parts.items()) + "."
        specs.append({"name": kind, "flag": kind, "type": "str",
                      "choices": list(registry.names()), "default": registry.default,
                      "multiple": False, "show_default": True, "metavar": None, "help": text})
    for flat, declared in part_option_flags().items():
        first = declared[0][0].options()[declared[0][1]]
        groups: dict[str, dict[str, list[str]]] = {}
        for cls, attribute in declared:
            value = cls.options()[attribute].default
            shown = " ".join(map(str, value)) if isinstance(value, tuple) else str(value)
            groups.setdefault(shown, {}).setdefault(cls.kind, []).append(cls.name)
        defaults = "; ".join(f"{shown} for " + " and ".join(
            f"--{kind} {' or '.join(names)}" for kind, names in users.items())
            for shown, users in groups.items())
        specs.append(_spec(flat, first, None, f"[default: {defaults}]"))
    specs += [_spec(n, o, o.default) for n, o in section_options(ModelConfig).items()]
    specs += [_spec(n, o, o.default) for n, o in section_options(TrainConfig).items()]
    return specs


def specs() -> list[dict[str, Any]]:
    """The options of ``fit``: from ``fit_options.json``, or :func:`derive` where it is missing."""
    try:
        return json.loads(PATH.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return derive()


def write() -> Path:
    """Write :func:`derive` to ``fit_options.json``; returns its path."""
    PATH.write_text(json.dumps(derive(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return PATH


if __name__ == "__main__":
    print(f"wrote {write()}")

"""Options and registries: how a swappable part declares itself.

Every swappable part (prior, likelihood, variational family, network, objective) is a class
registered under the name that the command line and ``config.json`` use::

    @register_prior("laplace")
    class LaplacePrior(Prior):
        scale = Option(float, 1.0, "Scale b of the Laplace prior (λ = 1/b).",
                       check=positive, flag="prior-scale")
        learnable = False           # capabilities are plain class attributes

An :class:`Option` states, once, an option's type, default, help text and validation. The CLI
flags and their help, the validation of a configuration, its JSON round trip and the rules
that refuse senseless combinations are all derived from these declarations, so adding a part is
one class in one module. This module imports neither torch nor Pyro: the command line reads it
to build its help text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ConfigError

#: Largest count torch can index with, the bound on every size and count option.
MAX_SIZE = 2**31 - 1
#: Choices that the command line shows before any part is imported.
DEVICES = ("auto", "cpu", "cuda")
BINARIZE_MODES = ("dynamic", "static", "none")
#: Picture modes of ``pyro-vae sample`` and their default ``--num``.
PICTURE_MODES = {"prior": 64, "reconstruct": 32, "interpolate": 8, "traverse": 1,
                 "manifold": 15, "latents": 2000, "analogies": 8}


def positive(value: Any) -> str | None:
    """Check: a positive finite number."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        return "must be a positive finite number"
    return None


def positive_int(value: Any) -> str | None:
    """Check: a positive integer that torch can index with."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        return "must be a positive integer"
    if value > MAX_SIZE:
        return "must be at most 2^31 - 1"
    return None


def non_negative_int(value: Any) -> str | None:
    """Check: a whole number ≥ 0."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return "must be a whole number ≥ 0"
    return None


@dataclass(frozen=True)
class Option:
    """One option of a part or of a configuration section, declared once.

    Parameters
    ----------
    type : type
        ``int``, ``float``, ``str`` or ``bool``; with ``multiple`` a tuple of these.
    default : object
        The value when the option is not given (``None``: no value).
    help : str
        One sentence for ``--help``; the default is appended by the CLI.
    check : callable, optional
        ``value -> None`` when valid, else the reason (``"must be positive"``).
    flag : str, optional
        The CLI flag without ``--``; default: the kind and the attribute name
        (``prior-components``). Parts that share a flag (``--flows``) share one value.
    choices : tuple or callable, optional
        Allowed values, or a function returning them (a registry's names).
    multiple : bool
        The option repeats on the command line and holds a tuple (``--hidden 512 --hidden 256``).
    metavar : str, optional
        What the CLI shows for the value.
    """

    type: type
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None
    flag: str | None = None
    choices: tuple | Callable[[], tuple] | None = None
    multiple: bool = False
    metavar: str | None = None

    def allowed(self) -> tuple | None:
        """The allowed values, or None when any value of the type passes."""
        return self.choices() if callable(self.choices) else self.choices

    def validate(self, value: Any, flag: str) -> Any:
        """``value`` converted (tuples for ``multiple``), or a :class:`ConfigError` naming
        ``flag``."""
        if value is None:
            return None
        if self.multiple:
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
            if not value:
                raise ConfigError(f"--{flag} needs at least one value, e.g. --{flag} "
                                  f"{self.default[0] if self.default else 1}")
            for item in value:
                self._validate_one(item, flag)
            return value
        return self._validate_one(value, flag)

    def _validate_one(self, value: Any, flag: str) -> Any:
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            raise ConfigError(f"--{flag} must be one of {', '.join(map(str, allowed))}; "
                              f"got {value!r}")
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        problem = _type_problem(value, self.type)
        if self.check is not None:
            try:  # the check's own words where it has some, also for a value of another type
                problem = self.check(value) or problem
            except ConfigError:
                raise  # a check that words its own refusal
            except (TypeError, ValueError, AttributeError):
                pass  # a check written for the option's type only
        if problem is not None:
            raise ConfigError(f"--{flag} {problem}, got {value!r}")
        return value


def _type_problem(value: Any, kind: type) -> str | None:
    """Why ``value`` is not of the option type ``kind``, or None."""
    if kind is bool:
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(value, bool) or not isinstance(value, kind):
        return {int: "must be a whole number", float: "must be a number",
                str: "must be text"}.get(kind, f"must be of type {kind.__name__}")
    return None


class Part:
    """Mixin of every swappable part: its registered ``name``, ``kind`` and declared options.

    Subclasses declare options as :class:`Option` class attributes and capabilities as plain
    class attributes; instances hold the options' values as attributes of the same names.
    """

    #: Set by :meth:`Registry.register`.
    name: str = ""
    kind: str = ""
    #: A few words for ``--help``.
    summary: str = ""

    @classmethod
    def options(cls) -> dict[str, Option]:
        """Attribute name → :class:`Option`, over the class and its bases."""
        found: dict[str, Option] = {}
        for klass in reversed(cls.__mro__):
            found.update({k: v for k, v in vars(klass).items() if isinstance(v, Option)})
        return found

    @classmethod
    def flag(cls, attribute: str) -> str:
        """The CLI flag of option ``attribute`` (without ``--``)."""
        return cls.options()[attribute].flag or f"{cls.kind}-{attribute}".replace("_", "-")

    @classmethod
    def resolve(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Every option's value: ``given`` (validated) or the declared default.

        Raises
        ------
        ConfigError
            For an unknown option or an invalid value.
        """
        options = cls.options()
        unknown = sorted(set(given) - set(options))
        if unknown:
            raise ConfigError(f"the {cls.kind} {cls.name!r} has no option {unknown[0]!r}; its "
                              f"options are {', '.join(options) or 'none'}")
        values = {}
        for attribute, option in options.items():
            value = given.get(attribute)
            values[attribute] = (option.default if value is None
                                 else option.validate(value, cls.flag(attribute)))
        return values


class Registry:
    """The parts of one kind, by the name used on the command line and in ``config.json``.

    Parameters
    ----------
    kind : str
        ``"prior"``, ``"likelihood"``, ``"guide"``, ``"arch"`` or ``"elbo"``: also the CLI flag
        that chooses among them.
    default : str, optional
        The part chosen when the flag is not given.
    """

    def __init__(self, kind: str, default: str | None = None):
        self.kind, self.default = kind, default
        self.parts: dict[str, type] = {}

    def register(self, name: str) -> Callable[[type], type]:
        """Class decorator: register ``cls`` under ``name`` (replacing a part of that name).

        Raises
        ------
        ConfigError
            If ``cls`` is not a subclass of :class:`Part`. (Option flags that collide with the
            configuration's own options are refused when a config is built, by
            :func:`pyro_vae.config.part_option_flags`.)
        """

        def decorate(cls: type) -> type:
            if not (isinstance(cls, type) and issubclass(cls, Part)):
                raise ConfigError(f"register_{self.kind}({name!r}) needs a subclass of the "
                                  f"{self.kind} base class")
            cls.name, cls.kind = name, self.kind
            self.parts[name] = cls
            return cls

        return decorate

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self.parts)

    def __getitem__(self, name: str) -> type:
        try:
            return self.parts[name]
        except (KeyError, TypeError):
            raise ConfigError(f"--{self.kind} must be one of {', '.join(self.parts)}; "
                              f"got {name!r}") from None

    def __contains__(self, name: object) -> bool:
        return name in self.parts

    def __iter__(self):
        return iter(self.parts)

    def __len__(self) -> int:
        return len(self.parts)


PRIORS = Registry("prior", default="normal")
LIKELIHOODS = Registry("likelihood", default="bernoulli")
#: Variational families q(z|x); chosen with ``--guide`` because they decide the guide.
FAMILIES = Registry("guide", default="normal")
NETWORKS = Registry("arch", default="mlp")
OBJECTIVES = Registry("elbo", default="trace")
#: Every registry, in the order their flags appear in ``pyro-vae fit --help``.
REGISTRIES = (LIKELIHOODS, PRIORS, FAMILIES, NETWORKS, OBJECTIVES)

register_prior = PRIORS.register
register_likelihood = LIKELIHOODS.register
register_family = FAMILIES.register
register_network = NETWORKS.register
register_objective = OBJECTIVES.register

"""Command-line options derived from :class:`nstjax.StyleConfig`'s declarations.

:func:`config_options` adds one option per config field to a Typer command:
its flag (``--field-name``), default, help, allowed values and ``--help``
panel all come from the field's declaration, so ``stylize`` and ``batch``
offer the same options with the same defaults and no default is written in
``cli/``. The command receives the values as ``config_values``, a dict that
:class:`~nstjax.StyleConfig` reads (comma-separated lists included).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Optional

import typer

from nstjax import config as nconfig

_TYPES = {"int": int, "float": float, "str": str}


def flag(field: dataclasses.Field) -> str:
  return "--" + field.name.replace("_", "-")


def cli_default(field: dataclasses.Field):
  """The field's default as the command line spells it (tuples comma-joined)."""
  value = field.default
  if isinstance(value, tuple):
    return ",".join(str(v) for v in value)
  return value


def cli_type(field: dataclasses.Field):
  """int, float or str (Optional when the default is None); lists are read as strings."""
  base = field.type.split("|")[0].strip()
  typ = _TYPES.get(base, str)
  return Optional[typ] if field.default is None else typ


METAVARS = {"init": "content|noise|style|PATH"}

# Flags the classic tools spell differently: flag -> (parameter name, field, value, help).
ALIASES = {
    "--original-colors": ("original_colors", "preserve_colors", "post",
                          "Alias of --preserve-colors post (jcjohnson/neural-style's -original_colors 1)."),
}


def parameters() -> list[inspect.Parameter]:
  """One keyword-only Typer parameter per config field."""
  params = []
  for f in nconfig.fields():
    choices = f.metadata["choices"]
    # Enumerated values are checked by StyleConfig.validate (one line, exit 1,
    # like every other bad value); the metavar lists them.
    info = typer.Option(cli_default(f), flag(f), help=f.metadata["help"],
                        rich_help_panel=f.metadata["group"],
                        metavar="|".join(choices) if choices else METAVARS.get(f.name))
    params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info,
                                    annotation=cli_type(f)))
  for flag_, (name, field, _, help_) in ALIASES.items():
    group = nconfig.per_job_fields()[field].metadata["group"]
    params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                    default=typer.Option(False, flag_, help=help_, rich_help_panel=group)))
  return params


def config_options(func):
  """Decorator: ``func(..., config_values: dict)`` gets every config field as an option."""
  own = inspect.signature(func, eval_str=True)
  mine = [p for p in own.parameters.values() if p.name != "config_values"]
  clash = {p.name for p in mine} & ({f.name for f in nconfig.fields()} | {a[0] for a in ALIASES.values()})
  if clash:
    raise TypeError(f"{func.__name__} declares config fields itself: {sorted(clash)}")
  params = mine + parameters()
  names = [f.name for f in nconfig.fields()]

  @functools.wraps(func)
  def command(**kwargs):
    values = {name: kwargs.pop(name) for name in names}
    for name, field, value, _ in ALIASES.values():
      if kwargs.pop(name):
        values[field] = value
    return func(config_values=values, **kwargs)

  command.__signature__ = own.replace(parameters=params)
  command.__annotations__ = {p.name: p.annotation for p in params}
  del command.__wrapped__   # Typer must see the generated signature
  return command


def explicit(ctx: typer.Context) -> set[str]:
  """Config fields the user gave on the command line (not left at their default)."""
  given = {name for name in ctx.params
           if ctx.get_parameter_source(name) is not None
           and ctx.get_parameter_source(name).name not in ("DEFAULT", "DEFAULT_MAP")}
  return given | {field for name, field, _, _ in ALIASES.values() if name in given}

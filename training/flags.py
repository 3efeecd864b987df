"""Command-line flags generated from a pydantic model: one `--field value` per field.

Used by `training.train` (TrainConfig) and `training.recipe` (RecipeConfig), so both read their
flags the same way. A flag left out is None, so the model's default (or a config file's value)
stands; pydantic checks every value given.

    list or tuple field    --field a b c            (nargs +)
    bool field             --field true|false       (also 1/0, yes/no, on/off)
    str field              --field TEXT             as given (a path or a name stays text)
    anything else          --field VALUE            a YAML scalar: 8 → 8, 0.5 → 0.5, else the text
"""
from __future__ import annotations

import argparse
import typing

from pydantic import BaseModel


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel]) -> argparse.ArgumentParser:
    """One flag per field of `model`, its description and default in the help."""
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        help_text = f"{field.description} (default: {default})"
        if isinstance(default, (list, tuple)):
            parser.add_argument(f"--{name}", nargs="+", default=None, help=help_text)
        elif isinstance(default, bool):
            parser.add_argument(f"--{name}", type=parse_bool, default=None, help=help_text)
        else:
            parser.add_argument(f"--{name}", type=str if takes_text(field.annotation) else yaml_scalar,
                                default=None, help=help_text)
    return parser


def given_values(args: argparse.Namespace, model: type[BaseModel]) -> dict:
    """The model's fields that were given on the command line."""
    return {name: getattr(args, name) for name in model.model_fields if getattr(args, name, None) is not None}


def takes_text(annotation) -> bool:
    """str and Optional[str] fields: '600' stays the text '600' (pydantic refuses a number for a str)."""
    return annotation is str or str in typing.get_args(annotation)


def parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def yaml_scalar(text: str):
    import yaml
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # Only numbers change type; anything else stays the text given (pydantic checks it).
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else text

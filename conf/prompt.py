"""Item-text prompt templates (``textmodel.prompt``): the syntax, parsed and checked without a tokenizer.

A template is a ``str.format`` string over an item's text fields, one line per part::

    Product: {title}
    Category: {category}
    Description: {body}

The config checks it when it is loaded, and so again when a saved text model is loaded, so a typo fails
at once, naming the placeholder, instead of silently encoding the literal text ``{titel}`` for every item.
:mod:`textmodel.prompt` renders the parsed lines with the tokenizer (empty lines dropped, the body cut first).
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated

from pydantic import AfterValidator

# The canonical ``items`` columns with text (features/schema.py), in the order request items carry them.
TEMPLATE_FIELDS: tuple[str, ...] = ("title", "body", "category", "subcategory")


class PromptTemplateError(ValueError):
    """A prompt template is malformed or names a field items do not have; the message names it."""


@dataclass(frozen=True)
class TemplateLine:
    """One line of a template: ``parts`` are ``(literal text, field or None)`` pairs, in order."""

    parts: tuple[tuple[str, str | None], ...]

    @cached_property  # read once per line per item rendered: computed once
    def fields(self) -> tuple[str, ...]:
        return tuple(f for _, f in self.parts if f is not None)


def parse_template(template: str) -> tuple[TemplateLine, ...]:
    """The lines of ``template``; :class:`PromptTemplateError` for a bad format string or placeholder.

    Only bare field names are allowed (``{title}``): no positions, attributes, format specs or conversions,
    because the renderer cuts field values token-wise and must know exactly what each placeholder prints.
    Literal braces are written ``{{`` and ``}}``.
    """
    allowed = ", ".join(TEMPLATE_FIELDS)
    formatter = string.Formatter()
    try:
        parsed = list(formatter.parse(template))
    except ValueError as exc:
        raise PromptTemplateError(
            f"prompt {template!r}: not a valid template ({exc}); placeholders are {{field}} with a field among "
            f"{allowed}, literal braces are written {{{{ and }}}}"
        ) from None
    named = 0
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in TEMPLATE_FIELDS:
            raise PromptTemplateError(
                f"prompt {template!r}: unknown placeholder {{{field}}}; allowed fields: {allowed}"
            )
        if spec or conversion:
            shown = f"!{conversion}" if conversion else f":{spec}"
            raise PromptTemplateError(
                f"prompt {template!r}: placeholder {{{field}{shown}}}: format specs and conversions are not "
                f"supported (write {{{field}}})"
            )
        named += 1
    if not named:
        raise PromptTemplateError(f"prompt {template!r}: names no field; use at least one of {allowed}")
    # A placeholder cannot span a newline (its name would hold one and fail above), so lines parse alone.
    return tuple(
        TemplateLine(tuple((literal, field) for literal, field, _, _ in formatter.parse(line)))
        for line in template.split("\n")
    )


def _checked(template: str) -> str:
    parse_template(template)
    return template


# The config type of ``textmodel.prompt``: a string that parses as a template (checked at load).
PromptTemplate = Annotated[str, AfterValidator(_checked)]

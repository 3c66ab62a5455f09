"""Item text for the encoder: the prompt template rendered from an item's fields and fitted to the token budget.

:func:`render_texts` is the one function that makes the text of every item the text model reads: the
catalogue at training and export (:class:`~textmodel.data.Catalogue`) and items that arrive with a request
(serving and batch scoring, through :attr:`textmodel.scoring.TextScorer.item_text`). An item therefore gets
the same text, and the same vector, wherever it comes from.

Fitting: a text over ``max_tokens`` would lose its end to plain right truncation, so a long description
would push out nothing but itself, yet a long title would push out the whole description and category.
Instead the fields are cut token-wise, by the model's own tokenizer: the body first, then the other fields
(longest first), the title only as a last resort, each to the longest prefix that still fits. The result
counts at most ``max_tokens`` tokens (special tokens included) by the same call the encoder tokenizes with,
so the encoder's truncation never cuts it further.

Text models saved before prompts existed have no template: their items are ``text_fields`` joined with
". " and cut at the end by the encoder's truncation, exactly as they were trained.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from conf import TextModelConfig
from conf.prompt import TemplateLine, parse_template
from features.schema import item_text

Item = Mapping[str, str | None]  # field name -> value (missing, None and blank all mean empty)

_ROUNDS = 8  # prefix-length guesses per field; one or two almost always suffice


class PromptError(ValueError):
    """Items cannot be fitted to the token budget: the template's own text is too long for it, or the
    tokenizer is a slow (Python) one, which cannot give the character offsets token-wise cuts need."""


@dataclass(frozen=True)
class Prompt:
    """How an item's fields become text: a parsed template, or (``template is None``) the legacy join."""

    template: str | None
    lines: tuple[TemplateLine, ...] = ()
    join_fields: tuple[str, ...] = ()

    @classmethod
    def parse(cls, template: str) -> Prompt:
        """A template prompt (:class:`conf.prompt.PromptTemplateError` when malformed)."""
        return cls(template=template, lines=parse_template(template))

    @classmethod
    def joined(cls, fields: Sequence[str]) -> Prompt:
        """The text of models saved before prompts: ``fields`` joined with ". "."""
        return cls(template=None, join_fields=tuple(fields))

    @classmethod
    def from_config(cls, cfg: TextModelConfig) -> Prompt:
        return cls.joined(cfg.text_fields) if cfg.prompt is None else cls.parse(cfg.prompt)

    @cached_property
    def fields(self) -> tuple[str, ...]:
        """The item fields this prompt reads, in order of first use."""
        names = self.join_fields if self.template is None else (f for line in self.lines for f in line.fields)
        return tuple(dict.fromkeys(names))

    def has_text(self, item: Item) -> bool:
        """True when at least one field the prompt reads is non-blank (the template's labels alone are no text)."""
        return any((v := item.get(f)) and v.strip() for f in self.fields)

    def fill(self, values: Mapping[str, str], spans: dict[str, tuple[int, int]] | None = None) -> str:
        """The template with cleaned ``values``, uncut; lines whose placeholders are all empty are dropped.

        ``spans``, when given, receives each field's (first) character span in the text.
        """
        pieces: list[str] = []
        pos = 0
        for line in self.lines:
            if line.fields and not any(values[f] for f in line.fields):
                continue
            if pieces:
                pieces.append("\n")
                pos += 1
            for literal, f in line.parts:
                pieces.append(literal)
                pos += len(literal)
                if f is not None:
                    value = values[f]
                    if spans is not None and f not in spans:
                        spans[f] = (pos, pos + len(value))
                    pieces.append(value)
                    pos += len(value)
        return "".join(pieces)


def render_texts(prompt: Prompt, items: Sequence[Item], tokenizer: Any, max_tokens: int) -> list[str]:
    """The encoder text of each item: ``prompt`` filled with its fields, fitted to ``max_tokens`` tokens.

    Batched: one tokenizer call over all texts, then a few over the texts that do not fit, cut short.
    """
    if prompt.template is None:
        # As before prompts: the join, cut at the end by the encoder's truncation (Tokenized.from_texts).
        return [item_text([item.get(f) for f in prompt.join_fields]) for item in items]
    backend = _counting_backend(tokenizer)
    if backend is None:
        raise PromptError(
            f"textmodel.prompt needs a fast (Rust) tokenizer to fit texts to max_tokens; {type(tokenizer).__name__} "
            "is not one (set textmodel.prompt: null to join textmodel.text_fields instead)"
        )
    values = [{f: _clean(item.get(f)) for f in prompt.fields} for item in items]
    texts = [prompt.fill(v) for v in values]
    encodings = _encode(backend, texts)
    over = [i for i, e in enumerate(encodings) if len(e) > max_tokens]
    orders = {i: _cut_order(prompt.fields, values[i]) for i in over}
    for step in range(len(prompt.fields)):
        if not over:
            return texts
        pairs = [(i, orders[i][step]) for i in over if values[i][orders[i][step]]]
        _fit_field(prompt, pairs, values, texts, encodings, backend, max_tokens)
        over = [i for i in over if len(encodings[i]) > max_tokens]
    if over:
        i = over[0]
        raise PromptError(
            f"prompt {prompt.template!r}: {len(over)} item(s) exceed max_tokens={max_tokens} even with every "
            f"field cut to nothing ({len(encodings[i])} tokens: {texts[i]!r}); shorten the template's own text"
        )
    return texts


@dataclass(frozen=True)
class ItemText:
    """A prompt bound to a tokenizer and token budget: what a text model needs to render any item's text.

    Built from the text model's own config (``textmodel.json`` for a saved model), never the current one.
    """

    prompt: Prompt
    tokenizer: Any
    max_tokens: int

    @classmethod
    def from_config(cls, cfg: TextModelConfig, tokenizer: Any) -> ItemText:
        return cls(Prompt.from_config(cfg), tokenizer, cfg.max_tokens)

    @property
    def fields(self) -> tuple[str, ...]:
        return self.prompt.fields

    def has_text(self, item: Item) -> bool:
        return self.prompt.has_text(item)

    def render(self, items: Sequence[Item]) -> list[str]:
        return render_texts(self.prompt, items, self.tokenizer, self.max_tokens)


def _clean(value: str | None) -> str:
    """Stripped, whitespace runs (newlines included) collapsed: a value stays on its template line."""
    return " ".join(value.split()) if value else ""


def _cut_order(fields: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """The order fields are cut in: body, the others longest first (ties in template order), title last."""
    middle = sorted((f for f in fields if f not in ("title", "body")), key=lambda f: -len(values[f]))
    return [*(["body"] if "body" in fields else []), *middle, *(["title"] if "title" in fields else [])]


# tokenizer -> its own copy of the Rust tokenizer, for counting (weak keys: a dropped model frees its copy)
_COUNTING: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _counting_backend(tokenizer: Any) -> Any | None:
    """A private copy of the tokenizer's Rust backend, without padding or truncation; None for a slow tokenizer.

    Hugging Face tokenizers set padding and truncation on their shared backend at each call and leave them
    there: counting through it after the encoder's padded call would count pad tokens, and a serving thread
    switching it off would race with the encoder's own calls. The copy holds the same vocabulary, normalizer
    and special-token rules (its ``tokenizer.json``), so it counts exactly what ``tokenizer(texts)`` yields.
    """
    shared = getattr(tokenizer, "backend_tokenizer", None)
    if shared is None:
        return None
    backend = _COUNTING.get(tokenizer)
    if backend is None:
        from tokenizers import Tokenizer

        backend = Tokenizer.from_str(shared.to_str())
        backend.no_padding()
        backend.no_truncation()
        _COUNTING[tokenizer] = backend
    return backend


def _encode(backend: Any, texts: Sequence[str]) -> list[Any]:
    """Encodings (``len``, char ``offsets``) as the encoder tokenizes: special tokens included, no truncation.

    The Rust tokenizer directly: the same call ``tokenizer(texts)`` makes, without its per-text Python wrapping.
    """
    return backend.encode_batch(list(texts), add_special_tokens=True) if texts else []


def _field_tokens(encoding: Any, span: tuple[int, int], limit: int) -> tuple[int, list[int]]:
    """Tokens of ``encoding`` outside the field at ``span``, and the ends (relative to the field's start) of the
    field's first ``limit`` tokens.

    A token that straddles the field's start (a label's space merged into its first word) counts as the
    field's; zero-width tokens (special tokens) count as outside; ends run as a maximum, since the pieces
    of one split character share a span.
    """
    start, stop = span
    offsets = encoding.offsets
    lo, hi = 0, len(offsets)
    while lo < hi and (offsets[lo][1] <= start or offsets[lo][0] == offsets[lo][1]):
        lo += 1
    while hi > lo and (offsets[hi - 1][0] >= stop or offsets[hi - 1][0] == offsets[hi - 1][1]):
        hi -= 1
    ends, top = [], 0
    for _, b in offsets[lo : min(hi, lo + limit)]:
        top = max(top, min(b, stop) - start)
        ends.append(top)
    return lo + len(offsets) - hi, ends


def _fit_field(
    prompt: Prompt,
    pairs: Sequence[tuple[int, str]],
    values: list[dict[str, str]],
    texts: list[str],
    encodings: list[Any],
    backend: Any,
    max_tokens: int,
) -> None:
    """Cut field ``f`` of each item ``i`` in ``pairs`` to the longest token prefix that fits (in place).

    The field's tokens are read off the current text's encoding; dropping as many as the text is over is
    almost always right at once, and a bracket search corrects the rare merge at the cut. When no prefix
    fits, the field is emptied (its line may then drop out) and the caller moves on to the next field.
    """
    if not pairs:
        return
    ends, guess = [], []
    for i, f in pairs:
        spans: dict[str, tuple[int, int]] = {}
        prompt.fill(values[i], spans)
        outside, field_ends = _field_tokens(encodings[i], spans[f], max_tokens + 1)
        ends.append(field_ends)
        guess.append(max(min(max_tokens - outside, len(field_ends) - 1), 0))
    full = [values[i][f] for i, f in pairs]
    # Shortest prefix (in tokens) known not to fit: the whole field, or max_tokens + 1 of its tokens.
    over = [len(e) for e in ends]
    fit = [-1] * len(pairs)  # longest prefix known to fit
    best: dict[int, tuple[str, str, Any]] = {}  # pair -> (value, text, encoding) at ``fit``
    todo = list(range(len(pairs)))
    for _ in range(_ROUNDS):
        if not todo:
            break
        tried = {j: full[j][: ends[j][guess[j] - 1]].rstrip() if guess[j] else "" for j in todo}
        filled = []
        for j in todo:
            i, f = pairs[j]
            values[i][f] = tried[j]
            filled.append(prompt.fill(values[i]))
        for j, text, enc in zip(todo, filled, _encode(backend, filled), strict=True):
            n = len(enc)
            if n <= max_tokens:
                fit[j], best[j] = guess[j], (tried[j], text, enc)
                guess[j] = min(guess[j] + max(max_tokens - n, 1), over[j] - 1)
            else:
                over[j] = guess[j]
                guess[j] = min(max(guess[j] - (n - max_tokens), fit[j] + 1, 0), over[j] - 1)
        todo = [j for j in todo if fit[j] < guess[j] < over[j]]
    empty = []
    for j, (i, f) in enumerate(pairs):
        if j in best:
            values[i][f], texts[i], encodings[i] = best[j]
        else:
            values[i][f] = ""
            empty.append(i)
    filled = [prompt.fill(values[i]) for i in empty]
    for i, text, enc in zip(empty, filled, _encode(backend, filled), strict=True):
        texts[i], encodings[i] = text, enc

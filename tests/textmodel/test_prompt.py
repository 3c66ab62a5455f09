"""Item text from the prompt template: empty lines dropped, fitted to the token budget with the title kept,
one renderer for the catalogue and request items, checked at config and artifact load, old models unchanged.

Token counts use the tiny GPT-2's byte-level tokenizer: one token per UTF-8 byte, so the expected texts
can be written out by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from conf import ConfigError, load_config
from conf.prompt import PromptTemplateError, parse_template
from ranker.pipeline import Candidate
from textmodel.artifact import META_FILE, ArtifactError, embedding_table, load_text_model, save_text_model
from textmodel.backbone import load_backbone
from textmodel.data import Catalogue
from textmodel.encoder import Tokenized
from textmodel.model import build_text_model_only
from textmodel.prompt import ItemText, Prompt, PromptError, render_texts
from textmodel.scoring import TextScorer

PRODUCT = "Product: {title}\nCategory: {category}\nDescription: {body}"


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text)["input_ids"])


def render(tokenizer, template: str, max_tokens: int, **fields: str | None) -> str:
    return render_texts(Prompt.parse(template), [fields], tokenizer, max_tokens)[0]


def test_default_config_prompt_is_the_product_template() -> None:
    cfg = load_config(None, [])
    assert cfg.textmodel.prompt == PRODUCT and cfg.textmodel.max_tokens == 32


def test_lines_whose_fields_are_all_empty_are_dropped(tiny_tokenizer) -> None:
    # ml100k has no descriptions: no dangling "Description:" label.
    text = render(tiny_tokenizer, PRODUCT, 64, title=" Toy Story (1995) ", body="", category="Animation")
    assert text == "Product: Toy Story (1995)\nCategory: Animation"
    assert render(tiny_tokenizer, PRODUCT, 64, title="Heat (1995)", body=None, category="  ") == "Product: Heat (1995)"
    # Whitespace runs (newlines too) collapse, so a value stays on its line; a literal-only line always stays;
    # a line with one non-empty field of two stays whole.
    text = render(tiny_tokenizer, "Item\n{title}\n{category} / {subcategory}", 64, title="a\n\nb  c", category="x")
    assert text == "Item\na b c\nx / "


def test_a_long_body_is_cut_first_and_the_title_kept_whole(tiny_tokenizer) -> None:
    title = "Stanley staples"
    text = render(tiny_tokenizer, PRODUCT, 64, title=title, body="Heavy-duty staples " * 20, category="Fasteners")
    assert text == f"Product: {title}\nCategory: Fasteners\nDescription: Heavy-"  # what the budget leaves
    assert count(tiny_tokenizer, text) == 64
    # When not even the label fits, the whole body line goes (no dangling "Description:").
    title = "Stanley Sharpshooter staples"
    text = render(tiny_tokenizer, PRODUCT, 64, title=title, body="Heavy-duty staples " * 20, category="Fasteners")
    assert text == f"Product: {title}\nCategory: Fasteners"
    # A body that fits is not touched.
    assert render(tiny_tokenizer, PRODUCT, 64, title="T", body="Short.", category="C").endswith("Description: Short.")


def test_other_fields_are_cut_before_the_title_longest_first(tiny_tokenizer) -> None:
    text = render(tiny_tokenizer, "{title}\n{category}\n{subcategory}", 30, title="t" * 5, category="c" * 30,
                  subcategory="s" * 10)  # fmt: skip
    assert text == "ttttt\n" + "c" * 13 + "\n" + "s" * 10 and count(tiny_tokenizer, text) == 30
    # The body goes first even when another field is longer.
    text = render(tiny_tokenizer, "{title}\n{category}\n{body}", 30, title="t" * 5, category="c" * 30, body="b" * 10)
    assert text == "ttttt\n" + "c" * 24


def test_a_title_longer_than_the_budget_is_cut_to_the_budget(tiny_tokenizer) -> None:
    text = render(tiny_tokenizer, PRODUCT, 32, title="T" * 80, body="A body.", category="Lab")
    assert text == "Product: " + "T" * 23 and count(tiny_tokenizer, text) == 32


def test_a_cut_never_splits_a_character(tiny_tokenizer) -> None:
    # "é" is two tokens here: 9 tokens are left for the body, so it keeps 4 whole characters (8 tokens).
    text = render(tiny_tokenizer, "Product: {title}\nDescription: {body}", 33, title="T", body="é" * 40)
    assert text == "Product: T\nDescription: éééé" and count(tiny_tokenizer, text) == 32


def test_the_encoder_does_not_cut_rendered_texts_further(tiny_tokenizer) -> None:
    items = [
        {"title": "Stanley Sharpshooter staples", "body": "Heavy-duty staples " * 20, "category": "Fasteners"},
        {"title": "Toy Story (1995)", "body": "", "category": "Animation"},
        {"title": "T" * 80, "body": "x", "category": "Lab"},
    ]
    texts = render_texts(Prompt.parse(PRODUCT), items, tiny_tokenizer, 48)
    tokens = Tokenized.from_texts(tiny_tokenizer, texts, 48)
    # 37: the title fills 37 tokens and "\nCategory: F" would take 12 of the 11 left, so that line goes whole.
    assert texts[0] == "Product: Stanley Sharpshooter staples"
    assert tokens.lengths.tolist() == [37, len("Product: Toy Story (1995)\nCategory: Animation"), 48]
    assert [tiny_tokenizer.decode(ids[:n]) for ids, n in zip(tokens.ids, tokens.lengths, strict=True)] == texts


def test_a_template_too_long_for_the_budget_is_named(tiny_tokenizer) -> None:
    with pytest.raises(PromptError, match=r"exceed max_tokens=8 even with every field cut to nothing"):
        render(tiny_tokenizer, "A long literal header\n{title}", 8, title="x")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Product: {titel}", "unknown placeholder {titel}; allowed fields: title, body, category, subcategory"),
        ("{title}\n{description}", "unknown placeholder {description}; allowed fields: title, body,"),
        ("{}", "unknown placeholder {}; allowed fields"),
        ("{title.upper}", "unknown placeholder {title.upper}"),
        ("Product: {title", "not a valid template (expected '}' before end of string)"),
        ("{title} }", "not a valid template (Single '}' encountered in format string)"),
        ("{title:>20}", "placeholder {title:>20}: format specs and conversions are not supported"),
        ("Just text", "names no field; use at least one of title, body, category, subcategory"),
    ],
)
def test_bad_templates_are_config_errors_naming_the_placeholder(template: str, message: str) -> None:
    with pytest.raises(PromptTemplateError, match=message.replace("{", r"\{").replace("(", r"\(").replace(")", r"\)")):
        parse_template(template)
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"textmodel.prompt={json.dumps(template)}"])
    assert "textmodel.prompt: Value error" in str(err.value) and message in str(err.value)


def test_literal_braces_are_escaped(tiny_tokenizer) -> None:
    assert render(tiny_tokenizer, "{{{title}}}", 32, title="x") == "{x}"


def test_catalogue_and_request_items_get_the_same_text(tiny_tokenizer) -> None:
    """One renderer: an item's catalogue text (rendered in one batch) is its text as a request item (alone)."""
    items = pl.DataFrame(
        {
            "item_id": ["a", "b", "c", "d"],
            "title": ["Lab scale", "T" * 70, "Glove box", "Toy Story (1995)"],
            "body": ["Reads to 0.01 g. " * 9, "x", "", ""],
            "category": ["Lab", "Tools", "Safety " * 9, "Animation"],
            "subcategory": ["Scales", "", "Gloves", "Children's"],
        }
    )
    text = ItemText(Prompt.parse(PRODUCT), tiny_tokenizer, 40)
    catalogue = Catalogue.from_items(items, text)
    alone = [text.render([Candidate(**row).fields()])[0] for row in items.sort("item_id").iter_rows(named=True)]
    assert catalogue.texts == alone
    assert catalogue.texts == [
        "Product: Lab scale\nCategory: Lab",  # "\nDescription: " alone would overrun: the body line goes
        "Product: " + "T" * 31,
        "Product: Glove box\nCategory: Safety Safe",
        "Product: Toy Story (1995)\nCategory: Anim",
    ]
    assert [count(tiny_tokenizer, t) for t in catalogue.texts] == [32, 40, 40, 40]


def test_the_old_join_is_kept_when_there_is_no_prompt(tiny_tokenizer) -> None:
    cfg = load_config(None, ["textmodel.prompt=null"]).textmodel
    text = ItemText.from_config(cfg, tiny_tokenizer)
    long = {"title": "A title", "body": "A body " * 20, "category": "ignored"}
    rendered = text.render([{"title": "A title", "body": "", "category": "c"}, long])
    assert rendered == ["A title", "A title. " + ("A body " * 20).strip()]  # uncut: the encoder cuts the end
    tokens = Tokenized.from_texts(tiny_tokenizer, rendered, cfg.max_tokens)
    assert tokens.lengths.tolist() == [7, 32]


def _save(folder: Path, tiny_data, edit, before_versioning: bool = False) -> Path:
    """An (untrained) tiny text model saved with its config edited by ``edit(config dict)`` (and, like a model
    saved before the definition was versioned, no ``config_version``)."""
    cfg = tiny_data[0]
    backbone = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir)
    model = build_text_model_only(cfg.textmodel, backbone, torch.device("cpu"))
    table = embedding_table(["i0"], torch.zeros(1, cfg.textmodel.dim))
    save_text_model(folder, model, cfg.textmodel, backbone.identity, table, {"history_cap": 8})
    meta = json.loads((folder / META_FILE).read_text())
    edit(meta["config"])
    if before_versioning:
        del meta["config_version"]
    (folder / META_FILE).write_text(json.dumps(meta))
    return folder


def test_a_model_saved_before_prompts_loads_with_the_old_text(tiny_data, tmp_path: Path) -> None:
    folder = _save(tmp_path / "old", tiny_data, lambda c: c.pop("prompt"), before_versioning=True)
    scorer = TextScorer(
        load_text_model(folder, tiny_data[0].textmodel.cache_dir, torch.device("cpu")), torch.device("cpu")
    )
    assert scorer.config.prompt is None and scorer.item_text.prompt.template is None
    assert scorer.render([{"title": "The bold story", "body": "Of sports.", "category": "c1"}]) == [
        "The bold story. Of sports."
    ]


def test_the_scorer_renders_with_the_saved_prompt_and_budget(tiny_data, tmp_path: Path) -> None:
    def edit(c: dict) -> None:
        c["prompt"], c["max_tokens"] = "Name: {title}\nKind: {subcategory}", 16

    folder = _save(tmp_path / "saved", tiny_data, edit)
    scorer = TextScorer(
        load_text_model(folder, tiny_data[0].textmodel.cache_dir, torch.device("cpu")), torch.device("cpu")
    )
    item = Candidate("new", title="A very long title indeed", subcategory="gear").fields()
    assert scorer.render([item]) == ["Name: A very lon"]  # the saved template and 16 tokens, not the config's
    assert ItemText.from_config(tiny_data[0].textmodel, scorer.tokenizer).render([item]) == [
        "A very long title indeed\ngear"
    ]


def test_a_broken_saved_template_is_an_artifact_error(tiny_data, tmp_path: Path) -> None:
    folder = _save(tmp_path / "broken", tiny_data, lambda c: c.update(prompt="Product: {titel}"))
    with pytest.raises(ArtifactError) as err:
        load_text_model(folder, tiny_data[0].textmodel.cache_dir, torch.device("cpu"))
    assert str(err.value) == (
        f"{folder / META_FILE}: saved text-model config is invalid: prompt: Value error, prompt 'Product: {{titel}}': "
        "unknown placeholder {titel}; allowed fields: title, body, category, subcategory"
    )


def test_rendering_ignores_the_padding_and_truncation_the_encoder_leaves_on_the_tokenizer(tiny_tokenizer) -> None:
    """Hugging Face tokenizers keep the last call's padding and truncation on their Rust backend; counting
    through it would count pad tokens (and cut), so a batch would render differently from one item alone."""
    from transformers import AutoTokenizer

    fresh = AutoTokenizer.from_pretrained(tiny_tokenizer.name_or_path)
    Tokenized.from_texts(fresh, ["x", "a much longer text"], 4)  # padding on, truncation at 4, left behind
    items = [{"title": "Lab scale", "body": "Reads to 0.01 g. " * 9}, {"title": "x"}]
    batch = render_texts(Prompt.parse(PRODUCT), items, fresh, 40)
    assert batch == [render(tiny_tokenizer, PRODUCT, 40, **items[0]), "Product: x"]
    assert batch[0] == "Product: Lab scale\nDescription: Reads to"

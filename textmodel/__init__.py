"""The PEFT-tuned GPT encoder: item text (prompt), backbone loading, layer cache, towers, click training, export,
scoring."""

from textmodel.artifact import LoadedTextModel, load_text_model, save_text_model
from textmodel.backbone import Backbone, BackboneError, BackboneIdentity, load_backbone
from textmodel.data import Catalogue, ImpressionSet, TextDataError
from textmodel.model import build_text_model, resolve_device
from textmodel.peft_methods import PEFT_METHODS
from textmodel.prompt import ItemText, Prompt, PromptError, render_texts
from textmodel.results import TrainResult
from textmodel.scoring import TextScorer, score_impressions
from textmodel.towers import TextModel
from textmodel.train import ClickTrainer

__all__ = [
    "PEFT_METHODS",
    "Backbone",
    "BackboneError",
    "BackboneIdentity",
    "Catalogue",
    "ClickTrainer",
    "ImpressionSet",
    "ItemText",
    "LoadedTextModel",
    "Prompt",
    "PromptError",
    "TextDataError",
    "TextModel",
    "TextScorer",
    "TrainResult",
    "build_text_model",
    "load_backbone",
    "load_text_model",
    "render_texts",
    "resolve_device",
    "save_text_model",
    "score_impressions",
]

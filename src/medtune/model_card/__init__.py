"""Model cards: content from plain values, laid out once, rendered as Markdown and self-contained HTML.

Nothing here touches files or tracking: :mod:`medtune.tracking.cards` writes and logs the card.
"""

from medtune.model_card._content import (
    INTENDED_USE,
    OUT_OF_SCOPE,
    ClassResult,
    DataInfo,
    Estimate,
    ExampleInfo,
    GateInfo,
    ModelCard,
    ModelInfo,
    Results,
    build_card,
    data_from_split_report,
    data_from_test_labels,
    describe_examples,
    short_description,
)
from medtune.model_card._figures import card_figures, gradcam_examples
from medtune.model_card._layout import FIGURES, SECTIONS
from medtune.model_card._render import render_html, render_markdown

__all__ = [
    "FIGURES",
    "INTENDED_USE",
    "OUT_OF_SCOPE",
    "SECTIONS",
    "ClassResult",
    "DataInfo",
    "Estimate",
    "ExampleInfo",
    "GateInfo",
    "ModelCard",
    "ModelInfo",
    "Results",
    "build_card",
    "card_figures",
    "data_from_split_report",
    "data_from_test_labels",
    "describe_examples",
    "gradcam_examples",
    "render_html",
    "render_markdown",
    "short_description",
]

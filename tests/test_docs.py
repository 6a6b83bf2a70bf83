"""The documentation that must stay true: the configuration page against the settings classes,
and the changelog's Unreleased section."""

from __future__ import annotations

from pathlib import Path

from rag.cli.configdoc import PAGE, render

ROOT = Path(__file__).resolve().parents[1]


def test_configuration_page_matches_the_settings() -> None:
    assert PAGE.read_text() == render(), "run `python -m rag.cli.configdoc` and commit the page"


def test_changelog_has_an_unreleased_section() -> None:
    assert "## Unreleased" in (ROOT / "CHANGELOG.md").read_text()

"""docs/settings.md shows the settings table generated from the one declaration, service.config.Settings."""

from __future__ import annotations

from service.config import Settings, settings_table
from tests.support import ROOT


def test_the_settings_page_embeds_the_table_generated_from_settings():
    page = (ROOT / "docs" / "settings.md").read_text()
    start, end = "<!-- settings-table:start -->\n", "<!-- settings-table:end -->"
    embedded = page[page.index(start) + len(start) : page.index(end)]
    assert embedded == settings_table(), "regenerate: python -c 'from service.config import settings_table; print(settings_table())'"
    assert all(f"`REGSEARCH_{name.upper()}`" in embedded for name in Settings.model_fields)

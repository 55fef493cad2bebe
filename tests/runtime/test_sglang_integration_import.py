"""The SGLang integration imports without SGLang (the project venv has none) and says what is
missing when used; its behaviour inside SGLang is tested by .ci/sglang (tests/sglang/)."""

from __future__ import annotations

import importlib.metadata
import sys

import pytest

from moe_runtime.integrations import sglang as integration


def test_imports_without_sglang_and_refuses_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "sglang" not in sys.modules

    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(integration.importlib.metadata, "version", missing)
    with pytest.raises(integration.SGLangIntegrationError, match=r"needs SGLang.*0\.5\.13"):
        integration.install(object())


@pytest.mark.parametrize("release", ["0.5.12", "0.5.14", "0.6.0"])
def test_other_releases_are_refused(monkeypatch: pytest.MonkeyPatch, release: str) -> None:
    monkeypatch.setattr(integration.importlib.metadata, "version", lambda name: release)
    with pytest.raises(integration.SGLangIntegrationError, match=r"supported releases: 0\.5\.13"):
        integration.sglang_release()
    monkeypatch.setattr(integration.importlib.metadata, "version", lambda name: "0.5.23")
    assert integration.sglang_release() == "0.5.23"

"""Every string the admin shows goes through Django's translation functions."""

from __future__ import annotations

import ast
import struct
from pathlib import Path

import pytest
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import translation

ADMIN_MODULES = [Path(__file__).resolve().parents[2] / "django_cloaca" / name
                 for name in ("admin.py", "operations.py", "checks.py", "models.py", "apps.py")]
SHOWN_KEYWORDS = {"description", "label", "help_text", "verbose_name", "verbose_name_plural", "title"}
SHOWN_ATTRIBUTES = SHOWN_KEYWORDS - {"label"}  # an AppConfig's label is an identifier
SHOWN_CALLS = {"message_user", "ValidationError"}


def _bare_strings(path: Path) -> list[str]:
    """Literal strings (and f-strings) handed to the admin as text for people, unwrapped."""
    found: list[str] = []

    def bare(node: ast.AST | None) -> bool:
        literal = isinstance(node, ast.Constant) and isinstance(node.value, str)
        return literal or isinstance(node, ast.JoinedStr)

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
            shown = [kw.value for kw in node.keywords if kw.arg in SHOWN_KEYWORDS]
            if name in SHOWN_CALLS:
                shown += node.args[1:2] if name == "message_user" else node.args[:1]
            found += [f"{path.name}:{value.lineno}" for value in shown if bare(value)]
        elif isinstance(node, ast.Assign) and bare(node.value):
            targets = [getattr(t, "id", None) for t in node.targets]
            found += [f"{path.name}:{node.lineno}" for t in targets if t in SHOWN_ATTRIBUTES]
    return found


def test_no_admin_text_is_a_bare_string() -> None:
    assert [spot for path in ADMIN_MODULES for spot in _bare_strings(path)] == []


def _write_mo(path: Path, messages: dict[str, str]) -> None:
    """A GNU gettext catalogue (``.mo``) holding ``messages``: what ``compilemessages`` would write."""
    messages = {"": "Content-Type: text/plain; charset=UTF-8\n", **messages}
    keys = sorted(messages)
    ids = [k.encode() for k in keys]
    strs = [messages[k].encode() for k in keys]
    start = 7 * 4 + 16 * len(keys)
    offsets: list[int] = []
    blob = b""
    for text in ids + strs:
        offsets += [len(text), start + len(blob)]
        blob += text + b"\0"
    header = struct.pack("7I", 0x950412DE, 0, len(keys), 7 * 4, 7 * 4 + 8 * len(keys), 0, 0)
    path.parent.mkdir(parents=True)
    path.write_bytes(header + struct.pack(f"{len(offsets)}I", *offsets) + blob)


@pytest.mark.django_db
def test_a_catalogue_translates_the_pages_and_messages(
    changer: object, store: object, tmp_path: Path
) -> None:
    """With a French catalogue for these strings, the pause and preview pages and the messages are French."""
    _write_mo(tmp_path / "fr" / "LC_MESSAGES" / "django.mo", {
        "Run the preview on a worker": "Lancer l'aperçu sur un worker",
        "Why are they paused?": "Pourquoi sont-ils en pause ?",
        "%(count)d trigger(s) disabled; this takes effect at their next poll.":
            "%(count)d déclencheur(s) désactivé(s).",
        "paused": "en pause",
        "Preview": "Aperçu",
    })
    client = Client()
    client.force_login(changer)  # type: ignore[arg-type]
    triggers = reverse("admin:django_cloaca_triggerschedule_changelist")
    with override_settings(LOCALE_PATHS=[str(tmp_path)]), translation.override("fr"):
        preview = client.get(reverse("admin:django_cloaca_triggerschedule_preview", args=["invoice_watcher"]))
        asked = client.post(triggers, {"action": "disable_triggers", "_selected_action": ["invoice_watcher"]})
        done = client.post(triggers, {"action": "disable_triggers", "_selected_action": ["invoice_watcher"],
                                      "post": "yes", "note": ""}, follow=True)
    assert "value=\"Lancer l'aperçu sur un worker\"" in preview.content.decode()
    assert "Aperçu" in preview.content.decode()
    assert "Pourquoi sont-ils en pause ?" in asked.content.decode()
    page = done.content.decode()
    assert "1 déclencheur(s) désactivé(s)." in page and "En pause" in page

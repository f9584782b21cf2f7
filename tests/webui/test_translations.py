"""Every user-visible text of the web UI has a Chinese translation in the catalogue (issue 6: zh-CN and en)."""

from __future__ import annotations

from pathlib import Path

from babel.messages.extract import extract_from_dir
from babel.messages.frontend import parse_mapping_cfg
from babel.messages.mofile import read_mo
from babel.messages.pofile import read_po

WEBUI = Path(__file__).resolve().parents[2] / "webui"
CATALOGUE = WEBUI / "translations" / "zh_Hans_CN" / "LC_MESSAGES"


def _texts_in_code() -> set[str]:
    with (WEBUI / "babel.cfg").open() as cfg:
        method_map, options_map = parse_mapping_cfg(cfg)
    ids = set()
    for _file, _line, message, _comments, _context in extract_from_dir(str(WEBUI), method_map, options_map):
        ids.add(message if isinstance(message, str) else message[0])
    return ids


def test_every_text_has_a_chinese_translation_and_the_compiled_catalogue_is_current() -> None:
    with (CATALOGUE / "messages.po").open("rb") as f:
        po = read_po(f)
    texts = _texts_in_code()
    assert len(texts) > 100
    untranslated = sorted(t for t in texts if po.get(t) is None or not po.get(t).string or po.get(t).fuzzy)
    assert untranslated == [], "add these to messages.po, then run .venv/bin/pybabel compile -d webui/translations"
    with (CATALOGUE / "messages.mo").open("rb") as f:
        mo = read_mo(f)
    stale = sorted(t for t in texts if (mo.get(t) is None or mo.get(t).string != po.get(t).string))
    assert stale == [], "messages.mo is older than messages.po: run .venv/bin/pybabel compile -d webui/translations"

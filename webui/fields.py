"""WTForms fields generated from the config rules (``gateway.rules``): a form checks the same range, choices
and pattern as the config file, and shows the rule's label and message in the user's language."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask_babel import LazyString, get_locale
from wtforms import BooleanField, Field, FloatField, IntegerField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import InputRequired, Length, NumberRange, Optional, Regexp

from gateway.runtime import Rule


def _chinese() -> bool:
    locale = get_locale()
    return locale is not None and locale.language == "zh"


def words(en: str, zh: str) -> LazyString:
    """Text in the language of the request (the rule table carries both)."""
    return LazyString(lambda: zh if _chinese() else en)


def label(rule: Rule) -> LazyString:
    return words(rule.label, rule.label_zh)


def choices(rule: Rule) -> list[SelectChoice]:
    return [SelectChoice(str(c.value), words(c.label, c.label_zh)) for c in rule.choices]


def _fix(rule: Rule, en: str, zh: str) -> LazyString:
    return words(*rule.form_fix) if rule.form_fix else words(en, zh)


def field(rule: Rule, required: bool | None = None, extra: Sequence[Any] = (),
          select: Sequence[tuple[str, str]] | None = None, **kwargs: Any) -> Field:
    """The form field for ``rule``.

    :param required: the field must be filled (default: the rule's key is required in the config).
    :param extra: more validators (a form's own, stricter checks).
    :param select: (value, label) choices of a select that the rule leaves open (baud rates a form offers).
    """
    required = rule.required if required is None else required
    text = label(rule)
    default = None if rule.default is None or rule.required else rule.default
    if rule.type is bool:
        return BooleanField(text, **{"default": default, **kwargs})
    if rule.choices or select is not None:
        options = choices(rule) if select is None else [SelectChoice(v, t) for v, t in select]
        return SelectField(text, choices=options, validators=[InputRequired(), *extra],
                           **{"default": None if default is None else str(default), **kwargs})
    kwargs.setdefault("default", default)
    presence: list[Any] = [InputRequired(words("Enter a whole number." if rule.type is int else "Enter a number.",
                                               "请输入整数。" if rule.type is int else "请输入数字。")
                                         if rule.type in (int, float) else None)] if required else [Optional()]
    if rule.type in (int, float):
        low, high = rule.low, rule.high
        numbers = [NumberRange(low, high, _fix(rule, f"Use a value from {low:g} to {high:g}.",
                                               f"请使用 {low:g} 到 {high:g} 之间的值。"))] if low is not None else []
        if rule.type is int:
            return IntegerField(text, validators=[*presence, *numbers, *extra], **kwargs)
        kwargs.setdefault("render_kw", {"inputmode": "decimal"})
        return FloatField(text, validators=[*presence, *numbers, *extra], **kwargs)
    checks: list[Any] = []
    if rule.pattern:
        checks.append(Regexp(f"^(?:{rule.pattern})$", message=_fix(rule, "Use another value.", "请使用其他值。")))
    if rule.max_length is not None:
        checks.append(Length(max=rule.max_length))
    return StringField(text, validators=[*presence, *checks, *extra], **kwargs)

"""A second step before anything is destroyed, that works without JavaScript (issue 15).

A destructive POST (delete a meter, a bus, a user) that does not carry ``confirm=yes`` answers with a
page that names what will be lost and posts the same request again with ``confirm=yes``. Uploads cannot
be re-posted without script, so their forms carry a required "I understand" checkbox instead
(:class:`ConfirmField`).
"""

from __future__ import annotations

from typing import Any

from flask import render_template, request
from flask_babel import lazy_gettext as _l
from wtforms import BooleanField
from wtforms.validators import InputRequired


def confirmation_page(question: str, consequence: str, cancel_url: str) -> Any | None:
    """None when the request was confirmed; else the confirmation page (HTTP 200) to return.

    :param question: "Delete meter X?", in the user's language.
    :param consequence: what is lost and what is kept, in the user's language.
    """
    if request.form.get("confirm") == "yes":
        return None
    return render_template("confirm.html", question=question, consequence=consequence,
                           action=request.path, cancel_url=cancel_url)


def ConfirmField(label: Any) -> BooleanField:  # noqa: N802 - used like a field class in form bodies
    """A checkbox the user must tick, for destructive uploads (restore, import, upgrade)."""
    return BooleanField(label, validators=[InputRequired(_l("Tick the box to confirm."))])

"""First boot, login, logout, own password; roles and the permission table.

Every view either is in :data:`PUBLIC` or is wrapped by :func:`requires`; a test walks the URL map
to keep it so. The permission table is documented in docs/webui.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from flask import (Blueprint, abort, current_app, flash, g, jsonify, redirect, render_template, request, session,
                   url_for)
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import PasswordField, SelectChoice, StringField
from wtforms.validators import EqualTo, InputRequired, Length, Regexp

from gateway.runtime import MIN_PASSWORD_LENGTH, Actor, Runtime, UserError

bp = Blueprint("auth", __name__)

#: permission -> roles that have it (docs/webui.md shows the same table)
PERMISSIONS: dict[str, frozenset[str]] = {
    "view": frozenset({"admin", "technician", "viewer"}),        # dashboard, emissions, reports, lists
    "commission": frozenset({"admin", "technician"}),            # buses, meters, scan, test-read
    "settings": frozenset({"admin"}),                            # factors choice, cloud, config import
    "users": frozenset({"admin"}),                               # accounts and roles
    "audit": frozenset({"admin", "technician"}),                 # read the audit log
    "backup": frozenset({"admin"}),                              # backup download, restore upload
    "upgrade": frozenset({"admin"}),                             # upload a signed release bundle
}

#: read-only views a demo on loopback shows without login (``[web] public_dashboard``)
PUBLIC_VIEWS = frozenset({"dashboard.index", "dashboard.api_status"})
#: endpoints reachable without logging in; every view of a blueprint in PUBLIC_BLUEPRINTS too
#: (``health``: /healthz and /metrics for the supervisor and Prometheus, which do not log in)
PUBLIC = frozenset({"static", "auth.setup", "auth.login", "dashboard.set_language"})
PUBLIC_BLUEPRINTS = ("health",)


def is_public(endpoint: str) -> bool:
    return endpoint in PUBLIC or endpoint.split(".")[0] in PUBLIC_BLUEPRINTS

NAME_RE = Regexp(r"^[A-Za-z0-9_.\-]{1,32}$", message=_l("Use 1-32 letters, digits, '-', '_' or '.'."))


def requires(permission: str) -> Callable:
    """Let the view run only for roles that have ``permission`` (403 otherwise)."""
    if permission not in PERMISSIONS:
        raise KeyError(permission)

    def wrap(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            anonymous_view = g.user is None and permission == "view" and g.get("public_view", False)
            if not anonymous_view and (g.user is None or g.user.role not in PERMISSIONS[permission]):
                abort(403)
            return view(*args, **kwargs)

        wrapped.permission = permission  # type: ignore[attr-defined]
        return wrapped

    return wrap


def can(permission: str) -> bool:
    return g.get("user") is not None and g.user.role in PERMISSIONS[permission]


def runtime_or_none() -> Runtime | None:
    """The service interface of the running gateway (None when the app was made without one)."""
    rt: Runtime | None = current_app.extensions["gateway_runtime"]
    return rt


def runtime() -> Runtime:
    """The running gateway's service interface; 503 when there is none or it is not running."""
    rt = runtime_or_none()
    if rt is None or not rt.running:
        abort(503)
    return rt


def actor() -> Actor:
    """The current user (``-`` before login) with the client's address, for the audit entries."""
    return Actor(g.user.name if g.get("user") is not None else "-", request.remote_addr or "")


def record(action: str, target: str = "", **detail: Any) -> None:
    """One audit entry for the current user, with the client's address."""
    runtime().record(actor(), action, target, detail)


def load_user() -> Any:
    """Before every request: who is logged in; send strangers to first boot or the login page."""
    g.user = None
    endpoint = request.endpoint or ""
    if endpoint == "static" or endpoint.split(".")[0] in PUBLIC_BLUEPRINTS:
        return None   # no store needed, no session: answers even while the gateway is not running
    rt = runtime()
    name = session.get("user")
    if name:
        g.user = rt.user(name)
        if g.user is None:       # deleted meanwhile
            session.clear()
    g.first_boot = g.user is None and not rt.has_users()
    if g.user is None and endpoint in PUBLIC_VIEWS and rt.config.web.public_dashboard:
        g.public_view = True
        return None
    if g.user is None and not is_public(endpoint):
        if g.first_boot:
            return redirect(url_for("auth.setup"))
        if request.path.startswith("/api/"):
            return jsonify({"error": "login required"}), 401
        return redirect(url_for("auth.login", next=request.full_path if request.method == "GET" else None))
    return None


def options(pairs: Any) -> list[SelectChoice]:
    """(value, label) pairs as wtforms choices (tuples are deprecated from wtforms 3.3)."""
    return [SelectChoice(value, label) for value, label in pairs]


def new_password_field(label: Any) -> PasswordField:
    return PasswordField(label, validators=[
        InputRequired(), Length(min=MIN_PASSWORD_LENGTH, max=256, message=_l("Use %(min)d to %(max)d characters."))],
        render_kw={"autocomplete": "new-password"})


class SetupForm(FlaskForm):
    name = StringField(_l("Administrator name"), default="admin", validators=[InputRequired(), NAME_RE])
    password = new_password_field(_l("Password"))
    confirm = PasswordField(_l("Repeat the password"), validators=[
        InputRequired(), EqualTo("password", message=_l("The two passwords differ."))])


class LoginForm(FlaskForm):
    name = StringField(_l("User name"), validators=[InputRequired(), Length(max=64)])
    password = PasswordField(_l("Password"), validators=[InputRequired(), Length(max=256)])


class PasswordForm(FlaskForm):
    current = PasswordField(_l("Current password"), validators=[InputRequired(), Length(max=256)])
    password = new_password_field(_l("New password"))
    confirm = PasswordField(_l("Repeat the password"), validators=[
        InputRequired(), EqualTo("password", message=_l("The two passwords differ."))])


def _start_session(name: str) -> None:
    lang = session.get("lang")
    session.clear()
    session.regenerate = True  # type: ignore[attr-defined]
    session["user"] = name
    if lang:
        session["lang"] = lang


@bp.route("/setup", methods=["GET", "POST"])
def setup() -> Any:
    """First boot: no account exists until the technician sets the administrator's password here."""
    if runtime().has_users():
        return redirect(url_for("auth.login"))
    form = SetupForm()
    if form.validate_on_submit():
        try:
            runtime().create_first_admin(form.name.data, form.password.data, actor())
        except UserError as exc:
            form.name.errors = [*form.name.errors, user_error_text(exc)]
        else:
            _start_session(form.name.data)
            flash(_("The administrator account is ready."), "ok")
            return redirect(url_for("dashboard.index"))
    return render_template("setup.html", form=form), 200 if request.method == "GET" or not form.errors else 400


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if not runtime().has_users():
        return redirect(url_for("auth.setup"))
    form = LoginForm()
    error = ""
    if session.pop("expired", False) and request.method == "GET":
        error = _("Your session has ended. Please log in again.")
    if form.validate_on_submit():
        name = form.name.data.strip()
        try:
            user = runtime().login(name, form.password.data, actor(), current_app.config["SESSION_IDLE_S"],
                                   current_app.config["SESSION_ABSOLUTE_S"])
        except UserError as exc:
            error = user_error_text(exc)
        else:
            _start_session(user.name)
            return redirect(same_site_path(request.args.get("next", "")) or url_for("dashboard.index"))
    status = 200 if request.method == "GET" else 400 if form.errors else 401 if error else 200
    return render_template("login.html", form=form, error=error), status


def same_site_path(target: str) -> str | None:
    """``target`` if it is a path on this site, else None: never an open redirect, never a bad header.

    Browsers drop tabs and line breaks from a URL and read a backslash as a slash, so ``/%09/host`` (a tab) is
    ``//host``, another site; a line break in a Location header is refused by the WSGI server (a 500).
    Any control character, white space or backslash therefore disqualifies the target.
    """
    if len(target) > 2000 or not target.startswith("/") or target.startswith("//"):
        return None
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F or c == "\\" for c in target):
        return None
    return target


@bp.post("/logout")
@requires("view")
def logout() -> Any:
    record("logout", f"user {g.user.name}")
    session.clear()
    session.ended = True  # type: ignore[attr-defined]
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@requires("view")
def own_password() -> Any:
    form = PasswordForm()
    if form.validate_on_submit():
        try:
            runtime().check_password(g.user.name, form.current.data)
        except UserError as exc:
            form.current.errors = [*form.current.errors, user_error_text(exc)]
        else:
            runtime().set_password(g.user.name, form.password.data, actor())
            _start_session(g.user.name)      # the old sessions ended with the old password
            flash(_("Your password was changed."), "ok")
            return redirect(url_for("dashboard.index"))
    return render_template("form_page.html", form=form, title=_("Change your password")), 400 if form.errors else 200


def user_error_text(exc: UserError) -> str:
    """The library's refusal in the user's language."""
    texts = {
        "bad_login": _("Wrong user name or password."),
        "busy": _("The gateway is busy checking other logins: try again in a few seconds."),
        "locked": _("Too many failed logins: try again in %(s)d s.", s=max(1, round(exc.wait_s))),
        "name_taken": _("This user name is taken: choose another."),
        "already_set_up": _("The gateway already has an administrator: log in instead."),
        "last_admin": _("The last administrator must stay an administrator: make another admin first."),
        "no_such_user": _("No such user."),
        "short_password": _("Use at least %(n)d characters.", n=MIN_PASSWORD_LENGTH),
        "long_password": _("Use at most 256 characters."),
        "bad_name": _("Use 1-32 letters, digits, '-', '_' or '.'."),
        "bad_role": _("Choose a role from the list."),
    }
    return texts.get(exc.code, str(exc))

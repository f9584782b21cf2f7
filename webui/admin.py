"""Users, the audit log, cloud and keys, system, backup: the administrator's pages."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, send_file, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import BooleanField, PasswordField, SelectField, StringField
from wtforms.validators import InputRequired, Length, Optional, Regexp

from gateway.runtime import MIN_PASSWORD_LENGTH, SYNC, ApplyError, BackupError, Change, UpgradeError, UserError
from webui.auth import NAME_RE, actor, new_password_field, options, record, requires, runtime, user_error_text
from webui.confirm import ConfirmField, confirmation_page
from webui.fields import field

bp = Blueprint("admin", __name__)

ROLE_CHOICES = [("viewer", _l("viewer")), ("technician", _l("technician")), ("admin", _l("admin"))]


class NewUserForm(FlaskForm):
    name = StringField(_l("User name"), validators=[InputRequired(), NAME_RE])
    role = SelectField(_l("Role"), choices=options(ROLE_CHOICES), validators=[InputRequired()])
    password = new_password_field(_l("Password"))


class RoleForm(FlaskForm):
    role = SelectField(_l("Role"), choices=options(ROLE_CHOICES), validators=[InputRequired()])


class ResetPasswordForm(FlaskForm):
    password = new_password_field(_l("New password"))


def _users_page(form: NewUserForm, status: int = 200) -> Any:
    return render_template("users.html", users=runtime().users(), form=form, role_form=RoleForm(),
                           reset_form=ResetPasswordForm()), status


@bp.route("/users", methods=["GET", "POST"])
@requires("users")
def user_list() -> Any:
    form = NewUserForm()
    if form.validate_on_submit():
        try:
            runtime().add_user(form.name.data, form.password.data, form.role.data, actor())
        except UserError as exc:
            form.name.errors = [*form.name.errors, user_error_text(exc)]
        else:
            flash(_("User %(name)s was added.", name=form.name.data), "ok")
            return redirect(url_for("admin.user_list"))
    return _users_page(form, 400 if form.errors else 200)


def _known(name: str) -> Any:
    user = runtime().user(name)
    if user is None:
        abort(404)
    return user


@bp.post("/users/<name>/role")
@requires("users")
def user_role(name: str) -> Any:
    _known(name)
    form = RoleForm()
    if not form.validate_on_submit():
        flash(_("Choose a role from the list."), "error")
        return redirect(url_for("admin.user_list"))
    try:
        runtime().set_role(name, form.role.data, actor())
    except UserError as exc:
        flash(user_error_text(exc), "error")
    else:
        flash(_("%(name)s is now %(role)s.", name=name, role=dict(ROLE_CHOICES)[form.role.data]), "ok")
    return redirect(url_for("admin.user_list"))


@bp.post("/users/<name>/password")
@requires("users")
def user_password(name: str) -> Any:
    _known(name)
    form = ResetPasswordForm()
    if not form.validate_on_submit():
        flash(_("Use at least %(n)d characters.", n=MIN_PASSWORD_LENGTH), "error")
        return redirect(url_for("admin.user_list"))
    runtime().set_password(name, form.password.data, actor())
    flash(_("The password of %(name)s was changed; their sessions have ended.", name=name), "ok")
    return redirect(url_for("admin.user_list"))


@bp.post("/users/<name>/delete")
@requires("users")
def user_delete(name: str) -> Any:
    _known(name)
    if not FlaskForm().validate_on_submit():
        abort(400)
    page = confirmation_page(_("Delete user %(name)s?", name=name),
                             _("The account and its sessions end at once; its audit entries are kept."),
                             url_for("admin.user_list"))
    if page is not None:
        return page
    try:
        runtime().delete_user(name, actor())
    except UserError as exc:
        flash(user_error_text(exc), "error")
    else:
        flash(_("User %(name)s was deleted.", name=name), "ok")
    return redirect(url_for("admin.user_list"))


@bp.get("/audit")
@requires("audit")
def audit_log() -> Any:
    page = request.args.get("page", "1")
    page_no = int(page) if page.isdigit() and 0 < int(page) < 100_000 else 1
    who = request.args.get("actor", "")[:64] or None
    action = request.args.get("action", "")[:64] or None
    per_page = 50
    entries = runtime().audit_entries(per_page + 1, (page_no - 1) * per_page, who, action)
    return render_template("audit.html", entries=entries[:per_page], more=len(entries) > per_page,
                           page=page_no, actor=who or "", action=action or "", check=runtime().audit_verify())


@bp.get("/system")
@requires("view")
def system() -> Any:
    return render_template("system.html", info=runtime().system_info(), now=time.time())


# -- cloud and keys ------------------------------------------------------------------------------------------
class CloudForm(FlaskForm):
    # the [sync] rules of the config (gateway.rules), so the form accepts what the file accepts
    enabled = BooleanField(_l("Send data to the platform"))
    broker_host = field(SYNC["broker_host"], required=True, default=None)
    broker_port = field(SYNC["broker_port"], required=True, default=None)
    tls = field(SYNC["tls"], default=None)
    ca_file = field(SYNC["ca_file"])
    username = field(SYNC["username"])
    password = PasswordField(_l("Password (empty: keep the current one)"), validators=[Optional(), Length(max=200)])
    # stricter than the config's rule (no wildcards): what a platform's topics look like
    topic_prefix = field(SYNC["topic_prefix"], required=True, default=None, extra=[Regexp(
        r"^[A-Za-z0-9_\-/]{1,100}$", message=_l("Use letters, digits, '-', '_' and '/'."))])


def _cloud_page(form: CloudForm, error: str = "", status: int = 200) -> Any:
    rt = runtime()
    keys = rt.keys()      # read only: opening this page never creates a key (issue 12)
    receiver = _("unreadable: %(reason)s", reason=keys.receiver_error) if keys.receiver_error else keys.receiver_key
    return render_template("cloud.html", form=form, error=error, gateway_key=keys.gateway_key,
                           receiver_key=receiver, gateway_id=rt.config.gateway_id, status=rt.sync_status()), status


@bp.route("/cloud", methods=["GET", "POST"])
@requires("settings")
def cloud() -> Any:
    rt = runtime()
    data = rt.config_data()
    sync = data.setdefault("sync", {})
    form = CloudForm(data=None if request.method == "POST" else {
        "enabled": sync.get("enabled", True), "broker_host": sync.get("broker_host", "127.0.0.1"),
        "broker_port": sync.get("broker_port", 1883), "tls": sync.get("tls", False), "ca_file": sync.get("ca_file"),
        "username": sync.get("username"), "topic_prefix": sync.get("topic_prefix", "carbon")})
    if form.validate_on_submit():
        old = {k: v for k, v in sync.items() if k != "password"}
        sync.update(enabled=bool(form.enabled.data), broker_host=form.broker_host.data,
                    broker_port=form.broker_port.data, tls=bool(form.tls.data), topic_prefix=form.topic_prefix.data)
        for key in ("ca_file", "username"):
            if getattr(form, key).data:
                sync[key] = getattr(form, key).data
            else:
                sync.pop(key, None)
        if form.password.data:
            sync["password"] = form.password.data
        try:
            rt.apply_data(data, actor(), Change("cloud.edit", "sync", {
                "old": old, "new": {k: v for k, v in sync.items() if k != "password"},
                "password_changed": bool(form.password.data)}))
        except ApplyError as exc:
            return _cloud_page(form, _("Not applied: %(reason)s", reason=str(exc)), status=400)
        flash(_("The cloud settings were saved and sync restarted."), "ok")
        return redirect(url_for("admin.cloud"))
    return _cloud_page(form, status=400 if form.errors else 200)


@bp.post("/cloud/test")
@requires("settings")
def cloud_test() -> Any:
    rt = runtime()
    if not FlaskForm().validate_on_submit():
        abort(400)
    result = rt.test_broker(actor(), current_app.config.get("CLOUD_TEST_TIMEOUT_S", 5.0))
    if result.ok:
        flash(_("Connected to %(where)s.", where=result.where), "ok")
    else:
        flash(_("Cannot connect to %(where)s: %(reason)s", where=result.where, reason=result.reason or _("no answer")),
              "error")
    # back to the page by GET, so a reload does not test again and the browser is not left on a POST (issue 15)
    return redirect(url_for("admin.cloud"))


@bp.post("/cloud/key")
@requires("settings")
def cloud_key() -> Any:
    """Make the gateway's signing key now (sync makes it when it first starts), to register it at the platform."""
    if not FlaskForm().validate_on_submit():
        abort(400)
    fingerprint = runtime().make_gateway_key(actor())
    flash(_("The gateway signing key is %(fingerprint)s.", fingerprint=fingerprint), "ok")
    return redirect(url_for("admin.cloud"))


# -- backup ---------------------------------------------------------------------------------------------------
class RestoreForm(FlaskForm):
    file = FileField(_l("Backup file (.cgbak)"), validators=[FileRequired(_l("Choose a file."))])
    confirm = ConfirmField(_l("I understand that the gateway's store is replaced by this backup at the next restart."))


def _backup_page(form: RestoreForm, error: str = "", status: int = 200) -> Any:
    view = runtime().backups()
    return render_template("backup.html", form=form, error=error, files=view.files, key_id=view.key_id,
                           pending=view.pending, directory=view.directory, last_error=view.last_error), status


@bp.get("/backup")
@requires("backup")
def backup_page() -> Any:
    return _backup_page(RestoreForm(formdata=None))


@bp.post("/backup/now")
@requires("backup")
def backup_now() -> Any:
    rt = runtime()
    if not FlaskForm().validate_on_submit():
        abort(400)
    path = rt.backup_now(actor())     # the daemon writes its own audit entry (backup.create); never raises
    if path is None:
        flash(_("The backup failed: %(reason)s", reason=rt.backups().last_error), "error")
    else:
        flash(_("Backup %(name)s was written.", name=path.name), "ok")
    return redirect(url_for("admin.backup_page"))


@bp.get("/backup/files/<name>")
@requires("backup")
def backup_download(name: str) -> Any:
    path = runtime().backup_file(name, actor())     # only names the backup directory lists
    if path is None:
        abort(404)
    return send_file(path, as_attachment=True, download_name=name, mimetype="application/octet-stream")


@bp.post("/backup/restore")
@requires("backup")
def backup_restore() -> Any:
    form = RestoreForm()
    if not form.validate_on_submit():
        return _backup_page(form, status=400)
    try:
        # the upload goes beside the store (same disk, same protection), checked, then staged or removed
        result = runtime().stage_restore(form.file.data.save, form.file.data.filename or "upload", actor())
    except BackupError as exc:
        return _backup_page(form, _("Not restored: %(reason)s", reason=str(exc)), 400)
    flash(_("The backup of %(when)s (%(n)d readings) was checked and will replace the store when the gateway "
            "restarts (systemctl restart carbon-gateway).",
            when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(result.backup_created_at)), n=result.readings), "ok")
    return redirect(url_for("admin.backup_page"))


# -- upgrade --------------------------------------------------------------------------------------------------
class UpgradeForm(FlaskForm):
    file = FileField(_l("Release bundle (.tar)"), validators=[FileRequired(_l("Choose a file."))])
    confirm = ConfirmField(_l("I understand that the gateway restarts with the new release, and goes back to "
                              "this one by itself if the new one does not become healthy."))


def _upgrade_page(form: UpgradeForm, error: str = "", status: int = 200) -> Any:
    view = runtime().upgrades()
    return render_template("upgrade.html", form=form, error=error, view=view), status


@bp.get("/upgrade")
@requires("upgrade")
def upgrade_page() -> Any:
    return _upgrade_page(UpgradeForm(formdata=None))


@bp.post("/upgrade")
@requires("upgrade")
def upgrade_upload() -> Any:
    form = UpgradeForm()
    if not form.validate_on_submit():
        return _upgrade_page(form, status=400)
    try:
        # checked completely here (signature, every file, version); the root upgrade unit then runs it
        request_ = runtime().request_upgrade(form.file.data.save, form.file.data.filename or "upload", actor())
    except UpgradeError as exc:
        return _upgrade_page(form, _("Not upgraded: %(reason)s", reason=str(exc)), 400)
    flash(_("Release %(version)s was checked and the upgrade is starting: the gateway restarts in a moment, "
            "and rolls back by itself if the new release does not become healthy.", version=request_["to"]), "ok")
    return redirect(url_for("admin.upgrade_page"))

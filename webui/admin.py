"""Users, the audit log, cloud and keys, system, backup: the administrator's pages."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, send_file, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import BooleanField, IntegerField, PasswordField, SelectField, StringField
from wtforms.validators import InputRequired, Length, NumberRange, Optional, Regexp

from local_store import audit, backup, users
from local_store.db import write_transaction
from sync import SyncError
from sync.keys import ensure_gateway_key, key_id, load_public
from sync.mqtt import Link
from webui.auth import NAME_RE, db, new_password_field, options, record, requires, runtime, user_error_text
from webui.confirm import ConfirmField, confirmation_page
from webui.configedit import ApplyError, apply_data, current_data

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
    return render_template("users.html", users=users.list_users(db()), form=form, role_form=RoleForm(),
                           reset_form=ResetPasswordForm()), status


@bp.route("/users", methods=["GET", "POST"])
@requires("users")
def user_list() -> Any:
    form = NewUserForm()
    if form.validate_on_submit():
        try:
            with write_transaction(db()):
                users.add_user(db(), form.name.data, form.password.data, form.role.data)
                record("user.add", f"user {form.name.data}", role=form.role.data)
        except users.UserError as exc:
            form.name.errors = [*form.name.errors, user_error_text(exc)]
        else:
            flash(_("User %(name)s was added.", name=form.name.data), "ok")
            return redirect(url_for("admin.user_list"))
    return _users_page(form, 400 if form.errors else 200)


def _known(name: str) -> users.User:
    user = users.get_user(db(), name)
    if user is None:
        abort(404)
    return user


@bp.post("/users/<name>/role")
@requires("users")
def user_role(name: str) -> Any:
    user = _known(name)
    form = RoleForm()
    if not form.validate_on_submit():
        flash(_("Choose a role from the list."), "error")
        return redirect(url_for("admin.user_list"))
    try:
        with write_transaction(db()):
            users.set_role(db(), name, form.role.data)
            record("user.role", f"user {name}", old=user.role, new=form.role.data)
    except users.UserError as exc:
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
        flash(_("Use at least %(n)d characters.", n=users.MIN_PASSWORD_LENGTH), "error")
        return redirect(url_for("admin.user_list"))
    with write_transaction(db()):
        users.set_password(db(), name, form.password.data)
        record("user.password", f"user {name}")
    flash(_("The password of %(name)s was changed; their sessions have ended.", name=name), "ok")
    return redirect(url_for("admin.user_list"))


@bp.post("/users/<name>/delete")
@requires("users")
def user_delete(name: str) -> Any:
    user = _known(name)
    if not FlaskForm().validate_on_submit():
        abort(400)
    page = confirmation_page(_("Delete user %(name)s?", name=name),
                             _("The account and its sessions end at once; its audit entries are kept."),
                             url_for("admin.user_list"))
    if page is not None:
        return page
    try:
        with write_transaction(db()):
            users.delete_user(db(), name)
            record("user.delete", f"user {name}", role=user.role)
    except users.UserError as exc:
        flash(user_error_text(exc), "error")
    else:
        flash(_("User %(name)s was deleted.", name=name), "ok")
    return redirect(url_for("admin.user_list"))


@bp.get("/audit")
@requires("audit")
def audit_log() -> Any:
    page = request.args.get("page", "1")
    page_no = int(page) if page.isdigit() and 0 < int(page) < 100_000 else 1
    actor = request.args.get("actor", "")[:64] or None
    action = request.args.get("action", "")[:64] or None
    per_page = 50
    entries = audit.entries(db(), per_page + 1, (page_no - 1) * per_page, actor, action)
    return render_template("audit.html", entries=entries[:per_page], more=len(entries) > per_page,
                           page=page_no, actor=actor or "", action=action or "", check=audit.verify(db()))


def _clock_sync() -> str:
    """``yes``/``no`` from systemd-timesyncd or chrony, or ``unknown`` where neither answers."""
    commands = (["timedatectl", "show", "-p", "NTPSynchronized", "--value"], ["chronyc", "-n", "tracking"])
    for command in commands:
        if shutil.which(command[0]) is None:
            continue
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=2, check=False).stdout
        except (OSError, subprocess.TimeoutExpired):
            continue
        if command[0] == "timedatectl" and out.strip() in ("yes", "no"):
            return out.strip()
        if command[0] == "chronyc" and "Leap status" in out:
            return "yes" if "Normal" in out else "no"
    return "unknown"


@bp.get("/system")
@requires("view")
def system() -> Any:
    rt = runtime()
    data_dir = rt.config.data_dir
    disk = shutil.disk_usage(data_dir)
    try:
        version = metadata.version("carbon-edge-gateway")
    except metadata.PackageNotFoundError:
        version = "unknown"
    db_bytes = sum(p.stat().st_size for p in data_dir.glob("gateway.db*") if p.is_file())
    return render_template("system.html", version=version, disk=disk, db_bytes=db_bytes, data_dir=data_dir,
                           clock=_clock_sync(), now=time.time(), gateway_id=rt.config.gateway_id,
                           uptime_s=time.monotonic(), pid=os.getpid())


# -- cloud and keys ------------------------------------------------------------------------------------------
class CloudForm(FlaskForm):
    enabled = BooleanField(_l("Send data to the platform"))
    broker_host = StringField(_l("Broker host"), validators=[InputRequired(), Length(max=253), Regexp(
        r"^[A-Za-z0-9.\-:]+$", message=_l("Use a host name or IP address."))])
    broker_port = IntegerField(_l("Broker port"), validators=[
        InputRequired(_l("Enter a whole number.")), NumberRange(1, 65535, _l("Use a port from 1 to 65535."))])
    tls = BooleanField(_l("TLS"))
    ca_file = StringField(_l("CA certificate file"), validators=[Optional(), Length(max=300)])
    username = StringField(_l("User name"), validators=[Optional(), Length(max=200)])
    password = PasswordField(_l("Password (empty: keep the current one)"), validators=[Optional(), Length(max=200)])
    topic_prefix = StringField(_l("Topic prefix"), validators=[InputRequired(), Regexp(
        r"^[A-Za-z0-9_\-/]{1,100}$", message=_l("Use letters, digits, '-', '_' and '/'."))])


def _key_fingerprints(rt: Any) -> tuple[str, str]:
    keys_dir = rt.config.keys_dir
    gateway = key_id(ensure_gateway_key(keys_dir).public_key())
    receiver = ""
    path = rt.config.sync.receiver_public_key
    if path is not None and path.is_file():
        try:
            receiver = key_id(load_public(path))
        except (SyncError, ValueError, OSError) as exc:
            receiver = _("unreadable: %(reason)s", reason=str(exc))
    return gateway, receiver


def _cloud_page(form: CloudForm, error: str = "", test_result: dict | None = None, status: int = 200) -> Any:
    rt = runtime()
    gateway, receiver = _key_fingerprints(rt)
    return render_template("cloud.html", form=form, error=error, test_result=test_result, gateway_key=gateway,
                           receiver_key=receiver, gateway_id=rt.config.gateway_id, status=rt.sync_status()), status


@bp.route("/cloud", methods=["GET", "POST"])
@requires("settings")
def cloud() -> Any:
    rt = runtime()
    data = current_data(rt)
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
            apply_data(rt, data)
        except ApplyError as exc:
            return _cloud_page(form, _("Not applied: %(reason)s", reason=str(exc)), status=400)
        record("cloud.edit", "sync", old=old, new={k: v for k, v in sync.items() if k != "password"},
               password_changed=bool(form.password.data))
        flash(_("The cloud settings were saved and sync restarted."), "ok")
        return redirect(url_for("admin.cloud"))
    return _cloud_page(form, status=400 if form.errors else 200)


@bp.post("/cloud/test")
@requires("settings")
def cloud_test() -> Any:
    rt = runtime()
    if not FlaskForm().validate_on_submit():
        abort(400)
    broker = rt.config.sync.broker
    link = Link(broker, client_id=f"{rt.config.gateway_id}-test-{secrets.token_hex(3)}")
    link.start()
    try:
        ok = link.connected.wait(current_app.config.get("CLOUD_TEST_TIMEOUT_S", 5.0))
    finally:
        link.stop()
    where = f"{broker.host}:{broker.port}"
    text = (_("Connected to %(where)s.", where=where) if ok else
            _("Cannot connect to %(where)s: %(reason)s", where=where, reason=link.last_error or _("no answer")))
    record("cloud.test", f"broker {where}", ok=ok)
    sync = current_data(rt).get("sync", {})
    form = CloudForm(formdata=None, data={k: sync.get(k) for k in ("enabled", "broker_host", "broker_port", "tls",
                                                                    "ca_file", "username", "topic_prefix")})
    return _cloud_page(form, test_result={"ok": ok, "text": text})


# -- backup ---------------------------------------------------------------------------------------------------
class RestoreForm(FlaskForm):
    file = FileField(_l("Backup file (.cgbak)"), validators=[FileRequired(_l("Choose a file."))])
    confirm = ConfirmField(_l("I understand that the gateway's store is replaced by this backup at the next restart."))


def _backup_page(form: RestoreForm, error: str = "", status: int = 200) -> Any:
    rt = runtime()
    config = rt.config
    try:
        key = backup.key_id(backup.load_backup_key(config.backup_key))
    except backup.BackupError:
        key = ""
    files = [{"name": p.name, "bytes": p.stat().st_size, "mtime": p.stat().st_mtime}
             for p in reversed(backup.list_backups(config.backup_dir))]
    pending = backup.staged_path(config.database).exists()
    return render_template("backup.html", form=form, error=error, files=files, key_id=key, pending=pending,
                           directory=config.backup_dir, last_error=getattr(rt, "backup_error", "")), status


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
    record("backup.request", "store")
    path = rt.backup()            # writes its own audit entry (backup.create), never raises
    if path is None:
        flash(_("The backup failed: %(reason)s", reason=rt.backup_error), "error")
    else:
        flash(_("Backup %(name)s was written.", name=path.name), "ok")
    return redirect(url_for("admin.backup_page"))


@bp.get("/backup/files/<name>")
@requires("backup")
def backup_download(name: str) -> Any:
    config = runtime().config
    found = {p.name: p for p in backup.list_backups(config.backup_dir)}   # only names the library lists
    if name not in found:
        abort(404)
    record("backup.download", name)
    return send_file(found[name], as_attachment=True, download_name=name, mimetype="application/octet-stream")


@bp.post("/backup/restore")
@requires("backup")
def backup_restore() -> Any:
    config = runtime().config
    form = RestoreForm()
    if not form.validate_on_submit():
        return _backup_page(form, status=400)
    # the upload goes beside the store (same disk, same protection), checked, then staged or removed
    fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".cgbak", dir=config.data_dir)
    try:
        with os.fdopen(fd, "wb") as handle:
            form.file.data.save(handle)
        result = backup.stage_restore(Path(tmp), config.database, config.backup_key)
    except backup.BackupError as exc:
        record("backup.restore_refused", form.file.data.filename or "upload", reason=str(exc))
        return _backup_page(form, _("Not restored: %(reason)s", reason=str(exc)), 400)
    finally:
        Path(tmp).unlink(missing_ok=True)
    record("backup.restore_staged", form.file.data.filename or "upload", readings=result.readings,
           backup_created_at=result.backup_created_at)
    flash(_("The backup of %(when)s (%(n)d readings) was checked and will replace the store when the gateway "
            "restarts (systemctl restart carbon-gateway).",
            when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(result.backup_created_at)), n=result.readings), "ok")
    return redirect(url_for("admin.backup_page"))

"""Buses, meters, scan, test-read, config export and import: commissioning from a phone."""

from __future__ import annotations

import logging
import time
from typing import Any

import tomlkit
from flask import (Blueprint, Response, abort, current_app, flash, redirect, render_template, request, url_for)
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from wtforms import SelectField, StringField
from wtforms.validators import InputRequired, Length, Optional, Regexp, ValidationError

from gateway.runtime import BAUDRATES, BUS, METER, ApplyError, Change, DriverError, ExceptionResponseError, parse_units
from webui.auth import actor, can, options, record, requires, runtime
from webui.confirm import confirmation_page
from webui.fields import field

bp = Blueprint("commissioning", __name__)
log = logging.getLogger(__name__)


# -- buses ---------------------------------------------------------------------------------------------------
# Fields, ranges, labels and messages come from the config rules (gateway.rules), so a form accepts what the
# config file accepts and says it the same way (issue 12).
class BusForm(FlaskForm):
    name = field(BUS["name"])
    transport = field(BUS["transport"])
    host = field(BUS["host"], required=False, default=None)   # a TCP bus names its host: no guess
    port = field(BUS["port"], required=False, default=None)
    serial_port = field(BUS["serial_port"], extra=[
        Regexp(r"^/dev/[A-Za-z0-9_./\-]+$", message=_l("Use a device path such as /dev/ttyUSB0."))])
    baudrate = field(BUS["baudrate"], select=[(str(b), str(b)) for b in BAUDRATES], default="9600")
    parity = field(BUS["parity"])
    stopbits = field(BUS["stopbits"])
    timeout_s = field(BUS["timeout_s"], required=True)

    def validate(self, extra_validators: Any = None) -> bool:
        ok = super().validate(extra_validators)
        if self.transport.data != "rtu":   # serial settings do not matter for a TCP bus
            for field in (self.serial_port, self.baudrate, self.parity, self.stopbits):
                field.errors = []
            ok = not any(f.errors for f in self)
        # cross-field rules after the fields (Optional() would stop an inline validator on an empty field)
        needs = [(self.host, _("A TCP bus needs a host.")), (self.port, _("A TCP bus needs a port."))] \
            if self.transport.data != "rtu" else [(self.serial_port, _("A serial bus needs its serial port."))]
        for field, message in needs:
            if not field.data and not field.errors:
                field.errors = [*field.errors, message]
                ok = False
        return ok


def _bus_table(form: BusForm, old: dict | None) -> dict:
    raw = dict(old or {})
    raw.update(name=form.name.data, transport=form.transport.data, timeout_s=float(form.timeout_s.data))
    for key in ("host", "port", "serial_port", "baudrate", "parity", "stopbits"):
        raw.pop(key, None)
    if form.transport.data == "rtu":
        raw.update(serial_port=form.serial_port.data, baudrate=int(form.baudrate.data), parity=form.parity.data,
                   stopbits=int(form.stopbits.data))
    elif not raw.get("simulated"):
        raw.update(host=form.host.data, port=form.port.data)
    return raw


def _apply(data: dict, action: str, target: str, **detail: Any) -> str:
    """Run and save the changed config; returns "" or the reason it was refused (nothing changed then)."""
    try:
        result = runtime().apply_data(data, actor(), Change(action, target, detail))
    except ApplyError as exc:
        return _("Not applied: %(reason)s", reason=str(exc))
    if result.restart_needed:
        flash(_("Web settings take effect when the gateway restarts."), "warning")
    return ""


def plain(value: Any) -> Any:
    """A tomlkit item as plain Python (for a comparison or the audit log)."""
    return value.unwrap() if hasattr(value, "unwrap") else value


def _put(data: dict, items: list[dict], index: int | None, table: dict, kind: str, name: str) -> str:
    """Put ``table`` at ``index`` (None: a new one), then run and save the config; "" or why not."""
    old = None if index is None else plain(items[index])
    if index is None:
        items.append(table)
    else:   # in place, value by value: the comments in and around the table stay (tomlkit)
        entry = items[index]
        for key in [k for k in entry if k not in table]:
            del entry[key]
        for key, value in table.items():
            if key not in entry or plain(entry[key]) != value:
                entry[key] = value
    return _apply(data, f"{kind}.add" if old is None else f"{kind}.edit", f"{kind} {name}", old=old, new=table)


@bp.get("/buses")
@requires("view")
def buses() -> Any:
    return render_template("buses.html", buses=runtime().config_data().get("buses", []),
                           meters=runtime().config_data().get("meters", []))


def _find(items: list[dict], key: str, value: str) -> int:
    for index, item in enumerate(items):
        if item.get(key) == value:
            return index
    abort(404)


def _entry(table: str, key: str, value: str | None) -> tuple[dict, list[dict], Any, dict | None]:
    """The running config's data, its list ``table`` and the entry whose ``key`` is ``value``
    (None: a new one; 404 when there is no such entry)."""
    data = runtime().config_data()
    items = data.setdefault(table, tomlkit.aot())   # written back as [[table]] entries
    index = _find(items, key, value) if value is not None else None
    return data, items, index, items[index] if index is not None else None


@bp.route("/buses/new", methods=["GET", "POST"], defaults={"name": None})
@bp.route("/buses/<name>/edit", methods=["GET", "POST"])
@requires("commission")
def bus_edit(name: str | None) -> Any:
    data, items, index, old = _entry("buses", "name", name)
    form = BusForm(data=None if request.method == "POST" else
                   {**(old or {}), "baudrate": str((old or {}).get("baudrate", 9600)),
                    "stopbits": str((old or {}).get("stopbits", 1))})
    if old is not None:
        form.name.render_kw = {"readonly": True}
    error = ""
    if form.validate_on_submit():
        if old is not None and form.name.data != old["name"]:
            form.name.errors = [_("A bus keeps its name; add a new bus instead.")]
        elif old is None and any(b.get("name") == form.name.data for b in items):
            form.name.errors = [_("This name is taken: choose another.")]
        else:
            table = _bus_table(form, old)
            error = _put(data, items, index, table, "bus", table["name"])
            if not error:
                flash(_("Bus %(name)s was saved and is running.", name=table["name"]), "ok")
                return redirect(url_for("commissioning.buses"))
    title = _("Add a bus") if old is None else _("Edit bus %(name)s", name=name)
    return render_template("form_page.html", form=form, title=title, error=error), 400 if form.errors or error else 200


@bp.post("/buses/<name>/delete")
@requires("commission")
def bus_delete(name: str) -> Any:
    data, items, index, old = _entry("buses", "name", name)
    if not FlaskForm().validate_on_submit():
        abort(400)
    if any(m.get("bus") == name for m in data.get("meters", [])):
        flash(_("Bus %(name)s still has meters: move or delete them first.", name=name), "error")
        return redirect(url_for("commissioning.buses"))
    page = confirmation_page(_("Delete bus %(name)s?", name=name),
                             _("The gateway stops using this line at once."), url_for("commissioning.buses"))
    if page is not None:
        return page
    items.pop(index)
    error = _apply(data, "bus.delete", f"bus {name}", old=old)
    flash(error or _("Bus %(name)s was deleted.", name=name), "error" if error else "ok")
    return redirect(url_for("commissioning.buses"))


# -- meters --------------------------------------------------------------------------------------------------
class MeterForm(FlaskForm):
    id = field(METER["id"])
    description = field(METER["description"])
    bus = field(METER["bus"], select=[])
    device_id = field(METER["device_id"])
    profile = field(METER["profile"], render_kw={"list": "profiles", "autocomplete": "off"})
    poll_interval_s = field(METER["poll_interval_s"], required=True)
    activity = field(METER["activity"])
    # Instrument-transformer ratios (issue 13), written as on the rating plate ("100/5": text, not a number
    # field); the config rule (gateway.rules, drivers.parse_ratio) says what is wrong.
    ct_ratio = StringField(_l("CT ratio, e.g. 100/5 (1: direct)"), validators=[Optional(), Length(max=40)])
    pt_ratio = StringField(_l("PT ratio, e.g. 10000/100 (empty: none)"), validators=[Optional(), Length(max=40)])
    enabled = field(METER["enabled"])

    def validate_profile(self, field: Any) -> None:
        if field.data not in runtime().profiles():
            raise ValidationError(_("Unknown profile: pick one from the list."))


@bp.get("/meters")
@requires("view")
def meters() -> Any:
    return render_template("meters.html", meters=runtime().config_data().get("meters", []),
                           profiles=runtime().profiles())


@bp.route("/meters/new", methods=["GET", "POST"], defaults={"meter_id": None})
@bp.route("/meters/<meter_id>/edit", methods=["GET", "POST"])
@requires("commission")
def meter_edit(meter_id: str | None) -> Any:
    data, items, index, old = _entry("meters", "id", meter_id)
    # from a scan's "Add this meter": bus, unit id, profile and the activity its profile measures
    prefill = old or {key: request.args[key] for key in ("bus", "device_id", "profile", "activity")
                      if key in request.args}
    form = MeterForm(data=None if request.method == "POST" else prefill)
    form.bus.choices = options([(b["name"], b["name"]) for b in data.get("buses", [])])
    error = ""
    if form.validate_on_submit():
        others = [m for i, m in enumerate(items) if i != index]
        if any(m.get("id") == form.id.data for m in others):
            form.id.errors = [_("This meter id is taken: choose another.")]
        elif any(m.get("bus") == form.bus.data and m.get("device_id") == form.device_id.data for m in others):
            form.device_id.errors = [_("Another meter on this bus has this unit id.")]
        else:
            table = dict(old or {})
            table.update(id=form.id.data, description=form.description.data or "", bus=form.bus.data,
                         device_id=form.device_id.data, profile=form.profile.data,
                         poll_interval_s=float(form.poll_interval_s.data), activity=form.activity.data,
                         enabled=bool(form.enabled.data))
            for key in ("ct_ratio", "pt_ratio"):
                text = (getattr(form, key).data or "").strip()
                if text:
                    table[key] = text
                else:
                    table.pop(key, None)
            error = _put(data, items, index, table, "meter", table["id"])
            if not error:
                flash(_("Meter %(id)s was saved and is being polled.", id=table["id"]), "ok")
                return redirect(url_for("commissioning.meters"))
    title = _("Add a meter") if old is None else _("Edit meter %(id)s", id=meter_id)
    return render_template("meter_form.html", form=form, title=title, error=error,
                           profiles=runtime().profiles()), 400 if form.errors or error else 200


@bp.post("/meters/<meter_id>/delete")
@requires("commission")
def meter_delete(meter_id: str) -> Any:
    data, items, index, old = _entry("meters", "id", meter_id)
    if not FlaskForm().validate_on_submit():
        abort(400)
    page = confirmation_page(_("Delete meter %(id)s?", id=meter_id),
                             _("Polling stops at once; the readings and emissions already stored are kept."),
                             url_for("commissioning.meters"))
    if page is not None:
        return page
    items.pop(index)
    error = _apply(data, "meter.delete", f"meter {meter_id}", old=old)
    flash(error or _("Meter %(id)s was deleted; its stored readings are kept.", id=meter_id), "error" if error else "ok")
    return redirect(url_for("commissioning.meters"))


# -- test-read -----------------------------------------------------------------------------------------------
class TestReadForm(FlaskForm):
    bus = field(METER["bus"], select=[])
    device_id = field(METER["device_id"])
    profile = field(METER["profile"], render_kw={"list": "profiles", "autocomplete": "off"})

    validate_profile = MeterForm.validate_profile


@bp.route("/test-read", methods=["GET", "POST"])
@requires("commission")
def test_read() -> Any:
    rt = runtime()
    form = TestReadForm(data=None if request.method == "POST" else
                        {k: request.args[k] for k in ("bus", "device_id", "profile") if k in request.args})
    form.bus.choices = options([(b.name, b.name) for b in rt.config.buses])
    readings, error = None, ""
    if form.validate_on_submit():
        started = time.monotonic()
        try:
            readings = rt.test_read(form.bus.data, form.device_id.data, form.profile.data)
        except ExceptionResponseError as exc:
            # the unit did answer: "no answer" would send the technician to the wiring instead of the profile
            error = _("No answer from unit %(unit)d: %(reason)s", unit=form.device_id.data, reason=str(exc)) \
                if exc.from_gateway else _("Unit %(unit)d answered but refused the read (%(reason)s): check the profile and the unit id.",
                      unit=form.device_id.data, reason=str(exc))
        except (DriverError, OSError) as exc:
            error = _("No answer from unit %(unit)d: %(reason)s", unit=form.device_id.data, reason=str(exc))
        except KeyError:
            error = _("The bus is restarting; try again in a moment.")
        record("meter.test_read", f"bus {form.bus.data} unit {form.device_id.data}", profile=form.profile.data,
               ok=not error, took_s=round(time.monotonic() - started, 3))
    return render_template("test_read.html", form=form, readings=readings, error=error,
                           profiles=rt.profiles()), 400 if form.errors else 200


# -- scan ----------------------------------------------------------------------------------------------------
class ScanForm(FlaskForm):
    bus = SelectField(_l("Bus"), validators=[InputRequired()])
    units = StringField(_l("Unit ids"), default="1-10", validators=[InputRequired(), Length(max=200)])

    def validate_units(self, field: Any) -> None:
        try:
            parse_units(field.data)
        except ValueError as exc:
            raise ValidationError(_("Use unit ids like 1-247 or 1,2,5-9.")) from exc


@bp.route("/scan", methods=["GET", "POST"])
@requires("commission")
def scan() -> Any:
    rt = runtime()
    form = ScanForm(data=None if request.method == "POST" else
                    {k: request.args[k] for k in ("bus", "units") if k in request.args})
    form.bus.choices = options([(b.name, b.name) for b in rt.config.buses])
    if form.validate_on_submit():
        try:
            job = rt.start_scan(form.bus.data, parse_units(form.units.data), actor(),
                                current_app.config["SCAN_TIMEOUT_S"])
        except DriverError:
            abort(404)
        return redirect(url_for("commissioning.scan_status", job_id=job.id))
    return render_template("form_page.html", form=form, title=_("Scan a bus"), submit=_("Start scan"),
                           intro=_("The gateway asks each unit id on the bus and guesses the profile of what answers. "
                                   "A silent unit id costs one reply timeout.")), 400 if form.errors else 200


@bp.get("/scan/<job_id>")
@requires("commission")
def scan_status(job_id: str) -> Any:
    job = runtime().scan_job(job_id)
    if job is None:
        abort(404)
    configured = {(m.bus, m.device_id) for m in runtime().config.meters}
    return render_template("scan.html", job=job, configured=configured)


@bp.post("/scan/<job_id>/cancel")
@requires("commission")
def scan_cancel(job_id: str) -> Any:
    """Stop the scan after the unit id it is asking; what it found stays listed."""
    if not FlaskForm().validate_on_submit():
        abort(400)
    if runtime().cancel_scan(job_id, actor()) is None:
        abort(404)
    return redirect(url_for("commissioning.scan_status", job_id=job_id))


@bp.post("/scan/<job_id>/continue")
@requires("commission")
def scan_continue(job_id: str) -> Any:
    """Go on from the first unit id the stopped scan did not ask, keeping what it found."""
    if not FlaskForm().validate_on_submit():
        abort(400)
    try:
        job = runtime().continue_scan(job_id, actor(), current_app.config["SCAN_TIMEOUT_S"])
    except DriverError:
        flash(_("The bus is not running any more: start a new scan."), "error")
        return redirect(url_for("commissioning.scan"))
    if job is None:
        abort(404)
    return redirect(url_for("commissioning.scan_status", job_id=job.id))


# -- config export / import ----------------------------------------------------------------------------------
IMPORT_MAX_BYTES = 1_000_000
#: the parts of a config the import preview lists (the gateway's id and data directory are never imported)
IMPORT_TABLES = ("buses", "meters", "emissions", "site", "sync", "web", "backup")


class ImportForm(FlaskForm):
    file = FileField(_l("Config file (TOML)"), validators=[FileRequired(_l("Choose a file."))])


@bp.get("/config/export")
@requires("commission")
def config_export() -> Any:
    """The running config as TOML. Secrets (the broker password, the metrics token) are never in a technician's
    export, and left out of an administrator's too unless asked for with ``?secrets=1`` (issue 15)."""
    rt = runtime()
    include = request.args.get("secrets") == "1"
    if include and not can("settings"):
        abort(403)
    record("config.export", "config", secrets=include)
    return Response(rt.export_text(include_secrets=include), mimetype="application/toml",
                    headers={"Content-Disposition": f'attachment; filename="{rt.config.gateway_id}.toml"'})


@bp.route("/config/import", methods=["GET", "POST"])
@requires("settings")
def config_import() -> Any:
    """Upload, then a preview of what changes against the running config, then a confirm step (issue 15)."""
    form = ImportForm()
    error = ""
    if form.validate_on_submit():
        name = form.file.data.filename or "upload"
        try:   # the guard refuses anything over its size, so reading one byte more is enough to tell
            preview = runtime().preview_import(form.file.data.read(IMPORT_MAX_BYTES + 1), name)
        except ApplyError as exc:
            error = _("Not applied: %(reason)s", reason=str(exc))
        else:
            return render_template("import_preview.html", preview=preview, tables=IMPORT_TABLES)
    return render_template("form_page.html", form=form, title=_("Import a config"), multipart=True, error=error,
                           submit=_("Preview the import"),
                           intro=_("Buses, meters, emissions, cloud and web settings are taken from the file; this "
                                   "gateway keeps its own id and data directory.")), 400 if form.errors or error else 200


@bp.post("/config/import/confirm")
@requires("settings")
def config_import_confirm() -> Any:
    if not FlaskForm().validate_on_submit():
        abort(400)
    try:
        runtime().confirm_import(request.form.get("token", ""), actor())
    except ApplyError as exc:
        flash(_("Not applied: %(reason)s", reason=str(exc)), "error")
        return redirect(url_for("commissioning.config_import"))
    flash(_("The config was imported and is running."), "ok")
    return redirect(url_for("commissioning.meters"))

"""Emissions charts (per day and month, by scope and by source), emission factors, report downloads."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, Literal

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from markupsafe import Markup
from wtforms import BooleanField, DateField, FloatField, IntegerField, SelectField, StringField
from wtforms.validators import InputRequired, Length, NumberRange, Optional, Regexp, ValidationError

from gateway.runtime import (BY_CHOICES, FACTOR_ACTIVITIES, ApplyError, Change, ChartText, DataImportError, FactorError,
                             NoReportDataError, ReportError)
from webui.labels import ACTIVITY_LABELS
from webui.auth import actor, options, requires, runtime

bp = Blueprint("emissions", __name__)


@bp.get("/emissions")
@requires("view")
def charts() -> Any:
    per: Literal["day", "month"] = "month" if request.args.get("per") == "month" else "day"
    text = ChartText(_("tCO2e per day by scope") if per == "day" else _("tCO2e per month by scope"),
                     _("tCO2e by source"), _("Scope 1"), _("Scope 2"))
    view = runtime().emission_charts(per, text)
    # the SVG is made by local_store.charts from numbers and escaped labels: safe to put in the page as it is
    return render_template("emissions.html", report=view.report, charts=[Markup(c) for c in view.charts], per=per,
                           start=view.start, end=view.end - timedelta(days=1))


@bp.get("/trace")
@requires("view")
def trace_figure() -> Any:
    """Drill down from a report figure to its raw readings (issue 14): readings, flags, interval, factor, tCO2e."""
    source = request.args.get("source", "").strip()[:80]
    at = request.args.get("at", "").strip()[:40]
    chain, error = None, ""
    if source:
        try:
            chain = runtime().trace(source, at)
        except ReportError as exc:
            error = str(exc)
    return render_template("trace.html", source=source, at=at, chain=chain, error=error), 400 if error else 200


# -- factors -------------------------------------------------------------------------------------------------
class ChoiceForm(FlaskForm):
    region = SelectField(_l("Grid region"))
    method = SelectField(_l("Electricity method"), choices=options([("location", _l("location-based (grid factor)")),
                                                           ("market", _l("market-based (contracts)"))]))
    gwp = SelectField(_l("Global warming potentials"), choices=options([("AR6", "IPCC AR6"), ("AR5", "IPCC AR5")]))
    include_ch4_n2o = BooleanField(_l("Count CH4 and N2O from fuels"))


class CustomFactorForm(FlaskForm):
    id = StringField(_l("Factor id"), validators=[InputRequired(), Regexp(
        r"^[A-Za-z0-9_.\-]{1,80}$", message=_l("Use 1-80 letters, digits, '-', '_' or '.'."))])
    activity = SelectField(_l("Activity"), choices=options([(a, ACTIVITY_LABELS.get(a, a)) for a in FACTOR_ACTIVITIES]))
    parameter = SelectField(_l("Parameter"), choices=options([
        ("ef", _l("emission factor")), ("ncv", _l("net calorific value")), ("carbon_content", _l("carbon content")),
        ("oxidation", _l("oxidation rate")), ("residual_mix", _l("residual mix")), ("ch4", "CH4"), ("n2o", "N2O")]))
    value = FloatField(_l("Value"), render_kw={"inputmode": "decimal"}, validators=[
        InputRequired(_l("Enter a number.")), NumberRange(0, 1e9, _l("Use a number of 0 or more."))])
    unit = StringField(_l("Unit"), validators=[InputRequired(), Length(max=30)], render_kw={"placeholder": "tCO2/MWh"})
    region = StringField(_l("Region"), default="national", validators=[InputRequired(), Length(max=40)])
    year = IntegerField(_l("Data year"), validators=[InputRequired(_l("Enter a whole number.")),
                                                     NumberRange(1990, 2100, _l("Use a year from 1990 to 2100."))])
    valid_from = DateField(_l("Valid from"), validators=[InputRequired(_l("Enter a date."))])
    valid_to = DateField(_l("Valid until (exclusive)"), validators=[Optional()])
    source = StringField(_l("Source (document, table, page)"), validators=[InputRequired(), Length(min=5, max=300)])

    def validate_valid_to(self, field: Any) -> None:
        if field.data and self.valid_from.data and field.data <= self.valid_from.data:
            raise ValidationError(_("Must be after the start date."))


class InstrumentForm(FlaskForm):
    """A green certificate, green power trade or PPA (issue 14): the fields of an instruments CSV row."""

    instrument = StringField(_l("Certificate or contract number"), validators=[InputRequired(), Length(max=80)])
    kind = SelectField(_l("Kind"), choices=options([("certificate", _l("green electricity certificate")),
                                                     ("green_power", _l("green power trade")), ("ppa", "PPA")]))
    start = DateField(_l("Valid from"), validators=[InputRequired(_l("Enter a date."))])
    end = DateField(_l("Valid until (exclusive)"), validators=[InputRequired(_l("Enter a date."))])
    amount = FloatField(_l("Electricity covered"), render_kw={"inputmode": "decimal"}, validators=[
        InputRequired(_l("Enter a number.")), NumberRange(0, 1e9, _l("Use a number of 0 or more."))])
    unit = SelectField(_l("Unit"), choices=options([("MWh", "MWh"), ("kWh", "kWh")]))
    emission_factor = FloatField(_l("Emission factor (tCO2/MWh, 0 for renewables)"), default=0.0,
                                 render_kw={"inputmode": "decimal"},
                                 validators=[InputRequired(_l("Enter a number.")), NumberRange(0, 2, _l("Use 0 to 2."))])


def _factor_page(choice: ChoiceForm, custom: CustomFactorForm, error: str = "", status: int = 200,
                 instrument: InstrumentForm | None = None) -> Any:
    view = runtime().factors()
    return render_template("factors.html", factors=view.factors, choice=choice, custom=custom, settings=view,
                           error=error, custom_file=view.custom_file, instruments=view.instruments,
                           instrument=instrument or InstrumentForm(formdata=None)), status


def _regions() -> list[tuple[str, str]]:
    return [(r, r) for r in runtime().factors().regions]


@bp.get("/factors")
@requires("view")
def factors() -> Any:
    s = runtime().factors()
    choice = ChoiceForm(data={"region": s.region, "method": s.method, "gwp": s.gwp,
                              "include_ch4_n2o": s.include_ch4_n2o})
    choice.region.choices = options(_regions())
    return _factor_page(choice, CustomFactorForm())


@bp.post("/factors/choice")
@requires("settings")
def factor_choice() -> Any:
    choice = ChoiceForm()
    choice.region.choices = options(_regions())
    if not choice.validate_on_submit():
        return _factor_page(choice, CustomFactorForm(formdata=None), status=400)
    data = runtime().config_data()
    emissions = data.setdefault("emissions", {})
    old = dict(emissions)
    emissions.update(region=choice.region.data, method=choice.method.data, gwp=choice.gwp.data,
                     include_ch4_n2o=bool(choice.include_ch4_n2o.data))
    try:
        runtime().apply_data(data, actor(), Change("factors.choose", "emissions", {"old": old, "new": emissions}))
    except ApplyError as exc:
        return _factor_page(choice, CustomFactorForm(formdata=None), _("Not applied: %(reason)s", reason=str(exc)), 400)
    flash(_("The emission settings were saved; emissions are recalculated."), "ok")
    return redirect(url_for("emissions.factors"))


def _current_choice(rt: Any) -> ChoiceForm:
    """The settings form as the running config has it (shown again beside another form's errors)."""
    choice = ChoiceForm(formdata=None, data={"region": rt.config.emissions.region, "method": rt.config.emissions.method,
                                             "gwp": rt.config.emissions.gwp})
    choice.region.choices = options(_regions())
    return choice


@bp.post("/factors/custom")
@requires("settings")
def factor_custom() -> Any:
    rt = runtime()
    custom = CustomFactorForm()
    choice = _current_choice(rt)
    if not custom.validate_on_submit():
        return _factor_page(choice, custom, status=400)
    entry = {"id": custom.id.data, "activity": custom.activity.data, "parameter": custom.parameter.data,
             "value": float(custom.value.data), "unit": custom.unit.data.strip(), "region": custom.region.data.strip(),
             "year": custom.year.data, "valid_from": custom.valid_from.data, "source": custom.source.data.strip()}
    if custom.valid_to.data:
        entry["valid_to"] = custom.valid_to.data
    try:
        rt.add_factor(entry, actor())
    except (FactorError, ApplyError) as exc:
        return _factor_page(choice, custom, _("Not added: %(reason)s", reason=str(exc)), 400)
    flash(_("Factor %(id)s was added; emissions are recalculated.", id=entry["id"]), "ok")
    return redirect(url_for("emissions.factors"))


@bp.post("/factors/instruments")
@requires("settings")
def instrument_add() -> Any:
    rt = runtime()
    form = InstrumentForm()
    choice = _current_choice(rt)
    if not form.validate_on_submit():
        return _factor_page(choice, CustomFactorForm(formdata=None), status=400, instrument=form)
    fields = [form.instrument.data.strip(), form.kind.data, form.start.data.isoformat(), form.end.data.isoformat(),
              repr(float(form.amount.data)), form.unit.data, repr(float(form.emission_factor.data))]
    try:
        rt.add_instrument(fields, actor())
    except DataImportError as exc:
        reason = "; ".join(e.split(": ", 1)[-1] for e in exc.errors)
        return _factor_page(choice, CustomFactorForm(formdata=None), _("Not added: %(reason)s", reason=reason), 400,
                            instrument=form)
    flash(_("Instrument %(id)s was added; market-based reports count it.", id=fields[0]), "ok")
    return redirect(url_for("emissions.factors"))


# -- reports -------------------------------------------------------------------------------------------------
class ReportForm(FlaskForm):
    class Meta:
        csrf = False   # a GET download that changes nothing

    start = DateField(_l("From"), validators=[InputRequired(_l("Enter a date."))])
    end = DateField(_l("Until (exclusive)"), validators=[InputRequired(_l("Enter a date."))])
    by = SelectField(_l("Rows per"), choices=options([("source", _l("source")), ("day", _l("day")), ("month", _l("month")),
                                              ("scope", _l("scope"))]))
    format = SelectField(_l("Format"), choices=options([("html", "HTML"), ("csv", "CSV"), ("json", "JSON")]))

    def validate_end(self, field: Any) -> None:
        if field.data and self.start.data and field.data <= self.start.data:
            raise ValidationError(_("Must be after the start date."))
        if field.data and self.start.data and (field.data - self.start.data).days > 3660:
            raise ValidationError(_("Choose at most ten years."))


assert {"source", "day", "month", "scope"} <= set(BY_CHOICES)


@bp.get("/reports")
@requires("view")
def reports() -> Any:
    today = date.today()
    form = ReportForm(request.args if request.args else None,
                      data={"start": today.replace(day=1), "end": today + timedelta(days=1)})
    error = ""
    if request.args and form.validate():
        try:
            report = runtime().report(form.start.data, form.end.data, by=form.by.data)
        except NoReportDataError as exc:
            # the library's text speaks to the CLI (--from/--to, the database path): word it for this form
            if exc.held is None:
                error = _("No emissions are stored yet: they appear once meters with an activity have been "
                          "polled for a while, or after an import.")
            else:
                error = _("No emissions from %(start)s until %(end)s. The gateway holds emissions from %(first)s "
                          "to %(last)s: choose dates in that range.", start=form.start.data, end=form.end.data,
                          first=exc.held[0], last=exc.held[1])
        except ReportError as exc:
            error = _("No report: %(reason)s", reason=str(exc))
        else:
            name = f"emissions-{form.start.data}-{form.end.data}"
            body, mime = runtime().render_report(report, form.format.data)
            return Response(body, mimetype=mime, headers={
                "Content-Disposition": f'attachment; filename="{name}.{form.format.data}"'})
    status = 400 if form.errors or error else 200
    return render_template("reports.html", form=form, error=error), status

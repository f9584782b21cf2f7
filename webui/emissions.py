"""Emissions charts (per day and month, by scope and by source), emission factors, report downloads."""

from __future__ import annotations

import json
import tempfile
import tomllib
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import tomli_w
from flask import Blueprint, Response, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from markupsafe import Markup, escape
from wtforms import BooleanField, DateField, FloatField, IntegerField, SelectField, StringField
from wtforms.validators import InputRequired, Length, NumberRange, Optional, Regexp, ValidationError

from local_store import FactorError, ReportError
from local_store.factors import default_factor_files, describe, load_library
from local_store.reports import BY_CHOICES, build_report, render_csv, render_html
from local_store.units import ACTIVITIES as FACTOR_ACTIVITIES
from webui.auth import options, record, requires, runtime
from webui.configedit import ApplyError, apply_data, current_data, write_atomically

bp = Blueprint("emissions", __name__)

SCOPE_COLORS = {"scope_1": "#c0504d", "scope_2": "#4f81bd"}
SOURCE_COLOR = "#2e7d4f"


def _bars(labels: list[str], series: dict[str, list[float]], colors: dict[str, str], title: str,
          legend: dict[str, str]) -> Markup:
    """A stacked bar chart as SVG text (no script, so the CSP holds; scales to the phone's width)."""
    width, height, left, bottom, top = 640, 280, 70, 50, 30
    n = max(1, len(labels))
    totals = [sum(values[i] for values in series.values()) for i in range(len(labels))]
    peak = max([t for t in totals if t > 0], default=1.0)
    slot = (width - left - 10) / n
    bar = max(2.0, slot * 0.7)
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" class="chart" aria-label="{escape(title)}">',
             f'<text x="{left}" y="18" class="chart-title">{escape(title)}</text>']
    for k in range(5):
        y = top + (height - top - bottom) * k / 4
        parts.append(f'<line x1="{left}" x2="{width - 10}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                     f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" class="axis">{peak * (4 - k) / 4:.3g}</text>')
    every = max(1, n // 6)
    for i, label in enumerate(labels):
        x = left + i * slot + (slot - bar) / 2
        y = height - bottom
        for name, values in series.items():
            h = (height - top - bottom) * values[i] / peak if values[i] > 0 else 0
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colors[name]}">'
                         f'<title>{escape(label)} {escape(legend[name])}: {values[i]:.4f} tCO2e</title></rect>')
        if i % every == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{height - bottom + 18}" text-anchor="middle" '
                         f'class="axis">{escape(label[-5:])}</text>')
    lx = left
    for name in series:
        parts.append(f'<rect x="{lx}" y="{height - 16}" width="10" height="10" fill="{colors[name]}"/>'
                     f'<text x="{lx + 14}" y="{height - 7}" class="axis">{escape(legend[name])}</text>')
        lx += 130
    parts.append("</svg>")
    return Markup("".join(parts))


def _hbars(rows: list[tuple[str, float]], title: str) -> Markup:
    """Horizontal bars, one per source."""
    width, row_h, left = 640, 30, 200
    height = 30 + row_h * max(1, len(rows))
    peak = max([v for _, v in rows if v > 0], default=1.0)
    parts = [f'<svg viewBox="0 0 {width} {height}" role="img" class="chart" aria-label="{escape(title)}">',
             f'<text x="0" y="14" class="chart-title">{escape(title)}</text>']
    for i, (label, value) in enumerate(rows):
        y = 24 + i * row_h
        w = (width - left - 90) * value / peak if value > 0 else 0
        parts.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" class="axis">{escape(label[:28])}</text>'
                     f'<rect x="{left}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="{SOURCE_COLOR}"/>'
                     f'<text x="{left + w + 4:.1f}" y="{y + 15}" class="axis">{value:.4f}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def _period_keys(start: date, end: date, per: str) -> list[str]:
    keys: list[str] = []
    day = start
    while day < end:
        key = day.isoformat() if per == "day" else day.strftime("%Y-%m")
        if not keys or keys[-1] != key:
            keys.append(key)
        day += timedelta(days=1)
    return keys


@bp.get("/emissions")
@requires("view")
def charts() -> Any:
    per: Literal["day", "month"] = "month" if request.args.get("per") == "month" else "day"
    today = date.today()
    if per == "day":
        start, end = today - timedelta(days=29), today + timedelta(days=1)
    else:
        start, end = date(today.year - 1, today.month, 1), (today.replace(day=1) + timedelta(days=32)).replace(day=1)
    try:
        report = build_report(runtime().store, start, end, by=per)
    except ReportError:
        report = None
    legend = {"scope_1": _("Scope 1"), "scope_2": _("Scope 2")}
    charts_svg = []
    if report is not None:
        found = {r["key"]: r for r in report["breakdown"]}
        keys = _period_keys(start, end, per)    # every day or month of the period, empty ones too
        charts_svg.append(_bars(keys, {k: [found.get(key, {}).get(k, 0.0) for key in keys]
                                       for k in ("scope_1", "scope_2")}, SCOPE_COLORS,
                                _("tCO2e per day by scope") if per == "day" else _("tCO2e per month by scope"), legend))
        charts_svg.append(_hbars([(s["source"], s["tco2e"]) for s in report["by_source"]], _("tCO2e by source")))
    return render_template("emissions.html", report=report, charts=charts_svg, per=per, start=start,
                           end=end - timedelta(days=1))


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
    activity = SelectField(_l("Activity"), choices=options([(a, a) for a in sorted(FACTOR_ACTIVITIES)]))
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


def custom_factor_file(rt: Any) -> Path:
    return rt.config.data_dir / "factors" / "custom.toml"


def _factor_page(choice: ChoiceForm, custom: CustomFactorForm, error: str = "", status: int = 200) -> Any:
    rt = runtime()
    library = rt.store.library
    settings = rt.config.emissions
    factors = describe(sorted(library.factors, key=lambda f: (f.activity, f.parameter, f.region, f.valid_from)))
    return render_template("factors.html", factors=factors, choice=choice, custom=custom, settings=settings,
                           error=error, custom_file=custom_factor_file(rt)), status


def _regions() -> list[tuple[str, str]]:
    return [(r, r) for r in sorted({f.region for f in runtime().store.library.factors})]


@bp.get("/factors")
@requires("view")
def factors() -> Any:
    s = runtime().config.emissions
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
    data = current_data(runtime())
    emissions = data.setdefault("emissions", {})
    old = dict(emissions)
    emissions.update(region=choice.region.data, method=choice.method.data, gwp=choice.gwp.data,
                     include_ch4_n2o=bool(choice.include_ch4_n2o.data))
    try:
        apply_data(runtime(), data)
    except ApplyError as exc:
        return _factor_page(choice, CustomFactorForm(formdata=None), _("Not applied: %(reason)s", reason=str(exc)), 400)
    record("factors.choose", "emissions", old=old, new=emissions)
    flash(_("The emission settings were saved; emissions are recalculated."), "ok")
    return redirect(url_for("emissions.factors"))


@bp.post("/factors/custom")
@requires("settings")
def factor_custom() -> Any:
    rt = runtime()
    custom = CustomFactorForm()
    choice = ChoiceForm(formdata=None, data={"region": rt.config.emissions.region, "method": rt.config.emissions.method,
                                             "gwp": rt.config.emissions.gwp})
    choice.region.choices = options(_regions())
    if not custom.validate_on_submit():
        return _factor_page(choice, custom, status=400)
    path = custom_factor_file(rt)
    content: dict[str, Any] = (
        tomllib.loads(path.read_text(encoding="utf-8")) if path.is_file() else
        {"library": {"name": "Custom factors (web UI)", "version": 1, "priority": 100}, "factors": []})
    entry = {"id": custom.id.data, "activity": custom.activity.data, "parameter": custom.parameter.data,
             "value": float(custom.value.data), "unit": custom.unit.data.strip(), "region": custom.region.data.strip(),
             "year": custom.year.data, "valid_from": custom.valid_from.data, "source": custom.source.data.strip()}
    if custom.valid_to.data:
        entry["valid_to"] = custom.valid_to.data
    content.setdefault("factors", []).append(entry)
    text = tomli_w.dumps(content)
    # validate the whole library with the new entry before anything is written
    with tempfile.TemporaryDirectory() as tmp:
        trial = Path(tmp) / "custom.toml"
        trial.write_text(text, encoding="utf-8")
        others = [Path(p) for p in rt.config.emissions.factor_files if Path(p) != path]
        try:
            load_library(default_factor_files() + others + [trial])
        except FactorError as exc:
            reason = str(exc).replace(str(trial), "custom.toml")
            return _factor_page(choice, custom, _("Not added: %(reason)s", reason=reason), 400)
    old_text = path.read_text(encoding="utf-8") if path.is_file() else None
    write_atomically(path, text)
    data = current_data(rt)
    files = data.setdefault("emissions", {}).setdefault("factor_files", [])
    try:
        if str(path) not in files:
            files.append(str(path))
            apply_data(rt, data)
    except ApplyError as exc:
        if old_text is None:
            path.unlink(missing_ok=True)
        else:
            write_atomically(path, old_text)
        return _factor_page(choice, custom, _("Not added: %(reason)s", reason=str(exc)), 400)
    rt.store.reload_factors()
    record("factors.add", f"factor {entry['id']}", entry=json.loads(json.dumps(entry, default=str)))
    flash(_("Factor %(id)s was added; emissions are recalculated.", id=entry["id"]), "ok")
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
            report = build_report(runtime().store, form.start.data, form.end.data, by=form.by.data)  # type: ignore[arg-type]
        except ReportError as exc:
            error = _("No report: %(reason)s", reason=str(exc))
        else:
            name = f"emissions-{form.start.data}-{form.end.data}"
            if form.format.data == "json":
                body, mime = json.dumps(report, ensure_ascii=False, indent=2, allow_nan=False), "application/json"
            elif form.format.data == "csv":
                body, mime = render_csv(report), "text/csv"
            else:
                body, mime = render_html(report), "text/html"
            return Response(body, mimetype=mime, headers={
                "Content-Disposition": f'attachment; filename="{name}.{form.format.data}"'})
    status = 400 if form.errors or error else 200
    return render_template("reports.html", form=form, error=error), status

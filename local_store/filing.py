"""A report that can be filed (issue 14 part 9): the organisation's particulars, per source the activity,
factor and vintage with its source, instruments, data completeness, uncertainty, CO2/CH4/N2O, in zh-CN
or English, laid out for A4 so a browser prints it to PDF.

Uncertainty follows the error-propagation approach of GB/T 32150 / ISO 14064-1 (IPCC 2006 Vol. 1 Ch. 3,
approach 1): per source the relative uncertainty of a product is U = sqrt(U_AD^2 + U_EF^2); for a sum of
sources U_total = sqrt(sum((U_i x E_i)^2)) / |sum(E_i)|. The activity-data uncertainty of a source is
interpolated between the metered and the estimated share of its data; the defaults are assumptions the
filer states (and can change in the profile), not values of a standard.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, fields
from html import escape
from pathlib import Path
from typing import Any

from local_store.errors import ReportError


@dataclass(frozen=True)
class FilingProfile:
    """The particulars a filed report carries (a TOML file, ``carbon-gateway report --profile``).

    :param uncertainty_measured_pct: activity-data uncertainty of metered data (a class 1 meter: 2 %).
    :param uncertainty_estimated_pct: of estimated (gap-filled) data.
    :param uncertainty_factor_pct: of the emission factors (default factors of the guidelines).
    """

    organisation: str = ""
    site: str = ""
    gateway: str = ""
    boundary: str = "operational control; the meters and imported activity data of this gateway"
    base_year: int | None = None
    method_statement: str = ("Activity data from meters read by the gateway (preprocessed as in docs/models.md) "
                             "and imported records, multiplied by the emission factors listed, per GB/T 32150-2015 "
                             "and the national enterprise accounting guidelines; Scope 2 per the GHG Protocol.")
    exclusions: str = "none declared"
    uncertainty_measured_pct: float = 2.0
    uncertainty_estimated_pct: float = 10.0
    uncertainty_factor_pct: float = 5.0


def load_profile(path: Path) -> FilingProfile:
    """:raises ReportError: naming the file, the key and the fix."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ReportError(f"{path}: cannot read the report profile ({exc}): write it as UTF-8 TOML, e.g. "
                          'organisation = "..."') from None
    known = {f.name for f in fields(FilingProfile)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ReportError(f"{path}: unknown key {unknown[0]!r}: use {', '.join(sorted(known))}")
    for key in ("uncertainty_measured_pct", "uncertainty_estimated_pct", "uncertainty_factor_pct"):
        v = data.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100:
            raise ReportError(f"{path}: {key} = {v!r}: use a percentage from 0 to 100")
    if "base_year" in data and (not isinstance(data["base_year"], int) or not 1990 <= data["base_year"] <= 2100):
        raise ReportError(f"{path}: base_year = {data['base_year']!r}: use a year like 2020")
    texts = {"organisation", "site", "gateway", "boundary", "method_statement", "exclusions"}
    bad = sorted(k for k in texts & set(data) if not isinstance(data[k], str))
    if bad:
        raise ReportError(f"{path}: {bad[0]} = {data[bad[0]]!r}: write it as a quoted string")
    values: dict[str, Any] = dict(data)
    return FilingProfile(**values)


def uncertainty(report: dict, profile: FilingProfile) -> dict:
    """Per source and in total, the relative uncertainty (%) and the absolute one (tCO2e), as above."""
    per_source = []
    squares = 0.0
    total = 0.0
    for r in report["by_source"]:
        share = r["share_measured"]
        u_ad = share * profile.uncertainty_measured_pct + (1 - share) * profile.uncertainty_estimated_pct
        u = math.hypot(u_ad, profile.uncertainty_factor_pct)
        e = r["tco2e"]
        per_source.append({"source": r["source"], "activity": r["activity"], "activity_data_pct": round(u_ad, 3),
                           "factor_pct": profile.uncertainty_factor_pct, "combined_pct": round(u, 3),
                           "tco2e": round(abs(e) * u / 100, 6)})
        squares += (abs(e) * u / 100) ** 2
        total += e
    total_abs = math.sqrt(squares)
    return {"per_source": per_source, "total_tco2e": round(total_abs, 6),
            "total_pct": round(100 * total_abs / abs(total), 3) if total else 0.0,
            "approach": "GB/T 32150 / ISO 14064-1 error propagation (IPCC 2006 Vol. 1 Ch. 3, approach 1)"}


LABELS = {
    "en": {"title": "Greenhouse gas emissions report", "organisation": "Organisation", "site": "Site",
           "gateway": "Gateway", "period": "Reporting period", "boundary": "Boundary", "base_year": "Base year",
           "method": "Method statement", "exclusions": "Exclusions", "summary": "Summary", "sources": "Sources",
           "source": "Source", "activity": "Activity", "amount": "Activity data", "factor": "Emission factor",
           "vintage": "Vintage", "doc": "Factor source", "co2": "CO2 (t)", "ch4": "CH4 (t)", "n2o": "N2O (t)",
           "tco2e": "tCO2e", "complete": "Measured share", "instruments": "Contractual instruments",
           "none": "none", "uncertainty": "Uncertainty", "combined": "combined", "total": "Total",
           "conventions": "Two accounting conventions", "flags": "Provisional factor vintages",
           "residual": "Residual mix", "generated": "Generated"},
    "zh-CN": {"title": "温室气体排放报告", "organisation": "报告主体", "site": "场所", "gateway": "网关",
              "period": "报告期", "boundary": "核算边界", "base_year": "基准年", "method": "方法说明",
              "exclusions": "排除项", "summary": "概要", "sources": "排放源", "source": "排放源",
              "activity": "活动类型", "amount": "活动数据", "factor": "排放因子", "vintage": "因子年份",
              "doc": "因子来源", "co2": "CO2（吨）", "ch4": "CH4（吨）", "n2o": "N2O（吨）", "tco2e": "tCO2e",
              "complete": "实测比例", "instruments": "合同工具", "none": "无", "uncertainty": "不确定性",
              "combined": "合成", "total": "合计", "conventions": "两种核算口径",
              "flags": "暂用的因子年份", "residual": "剩余电力组合", "generated": "生成时间"},
}


def render_filing_html(report: dict, profile: FilingProfile, lang: str = "zh-CN") -> str:
    """The fileable page: A4, page breaks between sections, no scripts, no external assets."""
    if lang not in LABELS:
        raise ReportError(f"lang = {lang!r}: use zh-CN or en")
    t = LABELS[lang]
    p = report["period"]
    factors = {f["ref"]: f for f in report["factors"]}
    u = uncertainty(report, profile)
    u_by = {(x["source"], x["activity"]): x for x in u["per_source"]}

    def table(headers: list[str], rows: list[list]) -> str:
        head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
        body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    source_rows = []
    for r in report["by_source"]:
        refs = [factors[x] for x in r.get("factor_refs", []) if x in factors]
        source_rows.append([
            r["source"], r["activity"], f"{r['consumption']:g} {r['unit']}",
            "; ".join(f"{f['parameter']} {f['value']:g} {f['unit']}" for f in refs),
            ", ".join(sorted({str(f["year"]) for f in refs})), "; ".join(sorted({f["source"] for f in refs})),
            f"{r['co2_t']:.6f}", f"{r['ch4_t']:.9f}", f"{r['n2o_t']:.9f}", f"{r['tco2e']:.6f}",
            f"{r['share_measured']:.1%}", f"±{u_by[(r['source'], r['activity'])]['combined_pct']:.1f} %"])
    mb = report.get("market_based") or {}
    inst = mb.get("instruments") or []
    inst_html = table([t["instruments"], "kind", "valid", "MWh", "tCO2/MWh"],
                      [[i["reference"], i["kind"], f"{i.get('start', '')} – {i.get('end', '')}", i["mwh_in_period"],
                        i["factor_t_per_mwh"]] for i in inst]) if inst else f"<p>{escape(t['none'])}</p>"
    rf = mb.get("residual_mix_factor")
    residual = (f"<p>{escape(t['residual'])}: {rf['value']} {escape(rf['unit'])} ({escape(rf['ref'])}; "
                f"{escape(rf['source'])})</p>") if rf else ""
    conv = report["conventions"]
    conv_rows = [[conv["gb_t_32150"]["standard"], "net", conv["gb_t_32150"]["total_tco2e"]],
                 [conv["ghg_protocol_iso_14064_1"]["standard"], "Scope 1 + Scope 2 (location, gross)",
                  conv["ghg_protocol_iso_14064_1"]["total_location_based_tco2e"]]]
    flags = report.get("vintage_flags") or []
    flag_html = (f"<h2>{escape(t['flags'])}</h2><ul>" + "".join(f"<li>{escape(f['note'])}</li>" for f in flags)
                 + "</ul>") if flags else ""
    particulars = [(t["organisation"], profile.organisation), (t["site"], profile.site),
                   (t["gateway"], profile.gateway), (t["period"], f"{p['from']} – {p['to']} (UTC{p['utc_offset']})"),
                   (t["boundary"], profile.boundary), (t["base_year"], profile.base_year or t["none"]),
                   (t["method"], profile.method_statement), (t["exclusions"], profile.exclusions)]
    return f"""<!doctype html>
<html lang="{escape(lang)}"><head><meta charset="utf-8">
<title>{escape(t['title'])} {escape(p['from'])} – {escape(p['to'])}</title>
<style>
@page {{ size: A4; margin: 18mm 15mm; }}
body {{ font-family: "Noto Sans CJK SC", "Noto Sans", Arial, sans-serif; font-size: 10pt; color: #111; }}
h1 {{ font-size: 16pt; }} h2 {{ font-size: 12pt; margin-top: 1.2em; page-break-after: avoid; }}
table {{ border-collapse: collapse; width: 100%; font-size: 8.5pt; page-break-inside: auto; }}
tr {{ page-break-inside: avoid; }}
th, td {{ border: 1px solid #999; padding: 3px 4px; text-align: left; vertical-align: top; }}
dl {{ display: grid; grid-template-columns: 11em 1fr; gap: 2px 8px; }} dt {{ font-weight: bold; }}
.section {{ page-break-before: always; }}
</style></head><body>
<h1>{escape(t['title'])}</h1>
<dl>{''.join(f'<dt>{escape(str(k))}</dt><dd>{escape(str(v))}</dd>' for k, v in particulars)}</dl>
<h2>{escape(t['summary'])}</h2>
{table([t['total'], 'Scope 1', 'Scope 2', t['co2'], t['ch4'], t['n2o'], t['uncertainty']],
       [[f"{report['total_tco2e']:.6f}", f"{report['by_scope']['scope_1']:.6f}", f"{report['by_scope']['scope_2']:.6f}",
         f"{report['by_gas']['co2_t']:.6f}", f"{report['by_gas']['ch4_t']:.9f}", f"{report['by_gas']['n2o_t']:.9f}",
         f"±{u['total_pct']:.1f} % (±{u['total_tco2e']:.6f} t)"]])}
<h2>{escape(t['conventions'])}</h2>
{table(['', '', t['tco2e']], conv_rows)}
<div class="section"><h2>{escape(t['sources'])}</h2>
{table([t['source'], t['activity'], t['amount'], t['factor'], t['vintage'], t['doc'], t['co2'], t['ch4'], t['n2o'],
        t['tco2e'], t['complete'], t['uncertainty']], source_rows)}
{flag_html}</div>
<div class="section"><h2>{escape(t['instruments'])}</h2>
{inst_html}
{residual}
<h2>{escape(t['uncertainty'])}</h2>
<p>{escape(u['approach'])}: U = sqrt(U_AD² + U_EF²); U_AD {profile.uncertainty_measured_pct:g} % metered,
{profile.uncertainty_estimated_pct:g} % estimated; U_EF {profile.uncertainty_factor_pct:g} %.</p>
<p>{escape(t['generated'])}: {escape(report['generated_at'])}</p></div>
</body></html>
"""

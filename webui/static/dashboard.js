// Refreshes the dashboard from /api/status every 2 s. Plain DOM, no framework: works offline on a phone.
"use strict";
(function () {
  const fmt = (x, digits) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
  const text = (id, value) => { const el = document.getElementById(id); if (el) el.textContent = value; };
  const utc = (ts) => (ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 19) : "–");
  const meters = document.getElementById("meters");
  const labels = meters.dataset;
  function render(status) {
    const clock = document.getElementById("clock-alarm");
    if (clock && status.clock) {
      clock.hidden = status.clock.synchronized !== false;
      text("clock-detail", status.clock.detail || "");
    }
    if (status.emissions) {
      text("today-total", fmt(status.emissions.today_tco2e, 4));
      text("today-scope1", fmt(status.emissions.today_scope1, 4));
      text("today-scope2", fmt(status.emissions.today_scope2, 4));
      text("month-total", fmt(status.emissions.month_tco2e, 4));
    }
    if (status.sync) {
      text("backlog-readings", status.sync.backlog_readings);
      text("backlog-batches", status.sync.backlog_batches);
      text("last-ack", utc(status.sync.last_ack_at));
      text("sync-error", status.sync.last_error || "");
      text("sync-alarm", status.sync.alarm || "");
    }
    for (const b of status.buses) {
      const row = document.querySelector(`[data-bus="${CSS.escape(b.name)}"]`);
      if (!row) continue;
      row.querySelector(".answering").textContent = b.answering + "/" + b.meters;
      for (const key of ["requests", "timeouts", "exceptions"]) row.querySelector("." + key).textContent = b[key];
    }
    for (const m of status.meters) {
      const card = meters.querySelector(`[data-meter="${CSS.escape(m.id)}"]`);
      if (!card) continue;
      card.className = "meter state-" + m.state;
      const state = card.querySelector(".state");
      const label = { ok: labels.labelOk, failing: labels.labelFailing, unknown: labels.labelUnknown, disabled: labels.labelDisabled }[m.state] || m.state;
      state.textContent = label + " " + (m.error || "");
      for (const key of ["requests", "timeouts", "exceptions"]) card.querySelector(".counters ." + key).textContent = m[key];
      const table = card.querySelector("table");
      for (const v of m.points) {
        let row = table.querySelector(`[data-point="${CSS.escape(v.point)}"]`);
        if (!row) {
          row = table.insertRow();
          row.dataset.point = v.point;
          for (const cls of ["", "value", "", "age"]) { const cell = row.insertCell(); cell.className = cls; }
          row.cells[0].textContent = v.point;
          row.cells[2].textContent = v.unit;
        }
        row.querySelector(".value").textContent = v.value === null ? v.reason : fmt(v.value, 3);
        row.querySelector(".age").textContent = v.age_s + " " + labels.labelAge;
      }
    }
  }
  async function refresh() {
    try {
      const response = await fetch("/api/status", { cache: "no-store", credentials: "same-origin" });
      if (response.status === 401) { window.location.reload(); return; }  // session ended: show the login page
      if (response.ok) render(await response.json());
    } catch (e) { /* gateway restarting: try again next tick */ }
  }
  refresh();
  setInterval(refresh, 2000);
})();

/* Leak review page: renders window.LEAK_REVIEW (data.js, written by `python -m leak_lightning review`).
   Plain ES2017, no framework, no fetch: the folder is opened from disk (file://), where fetch is refused.
   Every data string reaches the DOM through textContent or setAttribute, never as HTML: recording names are
   arbitrary text (a file may be called "<script>alert(1)</script>.wav"). */
(function () {
  'use strict';

  const PAGE_SIZE = 50;
  const HOUR = 3600000;
  const DAY = 24 * HOUR;
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
  const VERDICT_RANK = {'leak': 0, 'too few scored recordings': 1, 'order unknown': 2, 'no leak': 3};
  const LABEL_VALUES = ['leak', 'not leak', 'unsure'];

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    if (attrs) {
      for (const name of Object.keys(attrs)) {
        if (attrs[name] !== null && attrs[name] !== undefined) node.setAttribute(name, String(attrs[name]));
      }
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const name of Object.keys(attrs || {})) node.setAttribute(name, String(attrs[name]));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }

  /* ---------- data model ---------- */

  const D = window.LEAK_REVIEW;
  const model = {recs: [], times: [], nights: [], groups: [], queued: new Set()};

  // Times are placed as written (wall clock): a naive time and a "Z" time of the same text land on the same x.
  function parseTime(text) {
    if (typeof text !== 'string') return null;
    const m = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?/.exec(text);
    if (!m) return null;
    const ms = m[7] ? Math.round(Number('0.' + m[7]) * 1000) : 0;
    return Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], m[6] ? +m[6] : 0, ms);
  }

  function dayString(ms) {
    return new Date(ms).toISOString().slice(0, 10);
  }

  function noonOf(day) {
    return Date.UTC(+day.slice(0, 4), +day.slice(5, 7) - 1, +day.slice(8, 10), 12);
  }

  // The night of a time is the evening date of the noon-to-noon span holding it.
  function nightOf(ms) {
    return ms === null ? '' : dayString(ms - 12 * HOUR);
  }

  function showTime(text) {
    if (!text) return 'no time';
    const utc = /Z$/.test(text);
    return text.replace('T', ' ').replace(/Z$/, '') + (utc ? ' UTC' : '');
  }

  function num(value, digits) {
    return value === null || value === undefined ? '–' : Number(value).toFixed(digits === undefined ? 2 : digits);
  }

  function seconds(value) {
    return String(Math.round(value * 100) / 100);
  }

  function decisionText(r) {
    if (r.leak === true) return 'leak';
    if (r.leak === false) return 'no leak';
    return 'no decision (' + r.status + ')';
  }

  function statusKind(status) {
    return String(status || '').split(':')[0].trim();
  }

  function buildModel() {
    model.recs = D.recordings;
    const groups = new Map();
    for (const s of D.sensors || []) {
      groups.set(s.sensor, {id: s.sensor, info: s, ids: [], leaks: 0, latest: null});
    }
    model.recs.forEach((r, id) => {
      const t = parseTime(r.time);
      model.times[id] = t;
      model.nights[id] = r.night || nightOf(t);
      const key = r.sensor || '';
      if (!groups.has(key)) groups.set(key, {id: key, info: null, ids: [], leaks: 0, latest: null});
      const g = groups.get(key);
      g.ids.push(id);
      if (r.leak === true) g.leaks += 1;
      if (t !== null && (g.latest === null || t > g.latest)) g.latest = t;
    });
    for (const g of groups.values()) {
      g.ids.sort((a, b) => {
        const ta = model.times[a];
        const tb = model.times[b];
        if (ta === null || tb === null) return (ta === null) - (tb === null) || a - b;
        return ta - tb || a - b;
      });
    }
    // The "no sensor id" group goes last so that real sensors come first in the default order.
    const none = groups.get('');
    groups.delete('');
    model.groups = Array.from(groups.values());
    if (none) model.groups.push(none);
    for (const q of D.queue || []) model.queued.add(q.id);
  }

  /* ---------- header ---------- */

  function renderHeader() {
    const title = String(D.title || 'predictions');
    $('title').textContent = 'Leak review: ' + title;
    document.title = 'Leak review: ' + title;
    $('made').textContent = 'Built ' + showTime(D.made) + (D.source && D.source.recordings
      ? ' from the recordings in ' + D.source.recordings : '');
    $('rule').textContent = D.sensor_rule ? 'Sensor rule: ' + D.sensor_rule : 'Sensor rule: not recorded';
    const leakRecs = model.recs.filter((r) => r.leak === true).length;
    const leakSensors = (D.sensors || []).filter((s) => s.decision === 'leak').length;
    const counts = $('counts');
    const items = [
      [model.recs.length, model.recs.length === 1 ? 'recording' : 'recordings', 'count-recordings'],
      [leakRecs, 'decided leak', 'count-leak'],
      [leakSensors, 'of ' + (D.sensors || []).length + ' sensors with verdict leak', 'count-leak-sensors'],
    ];
    for (const item of items) {
      const li = el('li', {id: item[2]});
      li.appendChild(el('strong', null, item[0]));
      li.appendChild(document.createTextNode(' ' + item[1]));
      counts.appendChild(li);
    }
  }

  /* ---------- sensors over nights ---------- */

  const view = {rows: new Map(), marks: [], domain: null, page: 0, shown: []};

  function markClass(r) {
    const p = r.leak_probability;
    if (r.leak === true) {
      const level = p === null || p === undefined ? 1 : p >= 0.9 ? 3 : p >= 0.7 ? 2 : 1;
      return 'mark leak p' + level;
    }
    if (r.leak === false) return 'mark noleak ' + (p !== null && p !== undefined && p >= 0.2 ? 's2' : 's1');
    return 'mark nodecision';
  }

  function markLabel(r) {
    const parts = [r.path, showTime(r.time), decisionText(r)];
    if (r.leak_probability !== null && r.leak_probability !== undefined) {
      parts.push('leak probability ' + num(r.leak_probability));
    } else if (r.decision_score !== null && r.decision_score !== undefined) {
      parts.push('score ' + num(r.decision_score));
    } else {
      parts.push('no score');
    }
    return parts.join(', ');
  }

  function makeMark(id) {
    const r = model.recs[id];
    const b = el('button', {
      type: 'button', class: markClass(r), 'data-id': id,
      'data-leak': r.leak === true ? '1' : r.leak === false ? '0' : '',
      'aria-label': markLabel(r), title: markLabel(r), tabindex: '-1',
    });
    view.marks[id] = b;
    return b;
  }

  function makeRow(g) {
    // Rows start hidden: only the first page is ever laid out at load.
    const tr = el('tr', {'data-sensor': g.id});
    tr.hidden = true;
    const th = el('th', {scope: 'row', class: 'row-id'});
    if (g.id === '') th.appendChild(el('span', {class: 'group'}, 'no sensor id'));
    else th.textContent = g.id;
    tr.appendChild(th);
    const verdict = g.info ? g.info.decision : '';
    const vtd = el('td');
    const v = el('span', {class: 'verdict' + (verdict === 'leak' ? ' v-leak' : '')}, verdict || 'no verdict');
    if (g.info && g.info.note) v.setAttribute('title', g.info.note);
    vtd.appendChild(v);
    tr.appendChild(vtd);
    tr.appendChild(el('td', {class: 'leaks'}, g.leaks + ' of ' + g.ids.length));
    const cell = el('td');
    const strip = el('div', {class: 'strip', role: 'group', 'aria-label': 'recordings of ' +
      (g.id === '' ? 'recordings without a sensor id' : 'sensor ' + g.id)});
    const timed = el('div', {class: 'timed'});
    const untimed = el('div', {class: 'untimed'});
    for (const id of g.ids) (model.times[id] === null ? untimed : timed).appendChild(makeMark(id));
    strip.appendChild(timed);
    strip.appendChild(untimed);
    cell.appendChild(strip);
    tr.appendChild(cell);
    return tr;
  }

  function buildRows() {
    const frag = document.createDocumentFragment();
    for (const g of model.groups) {
      const tr = makeRow(g);
      view.rows.set(g.id, tr);
      frag.appendChild(tr);
    }
    $('sensor-rows').appendChild(frag);
    if (!model.times.some((t) => t === null)) $('sensor-table').classList.add('no-untimed');
  }

  // The axis runs from the noon before the first shown night to the noon after the last one.
  function computeDomain(from, to) {
    let lo = null;
    let hi = null;
    for (const t of model.times) {
      if (t === null) continue;
      if (lo === null || t < lo) lo = t;
      if (hi === null || t > hi) hi = t;
    }
    const first = from || (lo === null ? null : nightOf(lo));
    const last = to || (hi === null ? null : nightOf(hi));
    if (first === null || last === null || first > last) return null;
    const start = noonOf(first);
    return {start: start, nights: Math.max(1, Math.round((noonOf(last) - start) / DAY) + 1)};
  }

  function placeMarks() {
    const d = view.domain;
    const span = d ? d.nights * DAY : 1;
    view.marks.forEach((b, id) => {
      const t = model.times[id];
      if (t === null) return;
      // The strip is padded so that a mark at either end of the axis is not cut off.
      const f = d ? Math.min(1, Math.max(0, (t - d.start) / span)) : 0.5;
      b.style.left = 'calc(6px + (100% - 12px) * ' + f.toFixed(5) + ')';
    });
    const table = $('sensor-table');
    table.style.setProperty('--night-w', d ? (100 / d.nights) + '%' : '100%');
    renderAxis();
  }

  function renderAxis() {
    const axis = $('axis');
    axis.textContent = '';
    const timed = el('div', {class: 'timed'});
    const untimed = el('div', {class: 'untimed'}, 'untimed');
    axis.appendChild(timed);
    axis.appendChild(untimed);
    const d = view.domain;
    if (!d) {
      const none = el('span', {class: 'night-label'}, 'no times');
      none.style.left = '50%';  // through the CSSOM: the page's Content-Security-Policy refuses style attributes
      timed.appendChild(none);
      return;
    }
    const width = Math.max(200, (axis.clientWidth || 800) - 120);
    const every = Math.max(1, Math.ceil(d.nights / Math.max(1, Math.floor(width / 70))));
    const at = (node, f) => {
      node.style.left = 'calc(6px + (100% - 12px) * ' + f.toFixed(5) + ')';
      return node;
    };
    for (let k = 0; k <= d.nights; k += 1) timed.appendChild(at(el('span', {class: 'noon-tick'}), k / d.nights));
    for (let k = 0; k < d.nights; k += every) {
      const day = dayString(d.start + k * DAY);
      const text = (+day.slice(8, 10)) + ' ' + MONTHS[+day.slice(5, 7) - 1] + (k === 0 ? ' ' + day.slice(0, 4) : '');
      timed.appendChild(at(el('span', {class: 'night-label', title: 'night of ' + day}, text), (k + 0.5) / d.nights));
    }
  }

  function readFilters() {
    return {
      sensor: $('filter-sensor').value.trim().toLowerCase(),
      verdict: $('filter-verdict').value,
      status: $('filter-status').value,
      from: $('filter-from').value,
      to: $('filter-to').value,
      sort: $('sort').value,
    };
  }

  function recordingPasses(id, f) {
    const r = model.recs[id];
    if (f.status && statusKind(r.status) !== f.status) return false;
    if (f.from || f.to) {
      const night = model.nights[id];
      if (!night) return false;
      if (f.from && night < f.from) return false;
      if (f.to && night > f.to) return false;
    }
    return true;
  }

  function sensorPasses(g, f) {
    if (f.sensor && (g.id === '' ? 'no sensor id' : g.id.toLowerCase()).indexOf(f.sensor) < 0) return false;
    if (f.verdict === 'none') return !g.info;
    if (f.verdict && (!g.info || g.info.decision !== f.verdict)) return false;
    return true;
  }

  const byId = (a, b) => (a.id === '') - (b.id === '') || a.id.localeCompare(b.id, undefined, {numeric: true});
  const rank = (g) => (!g.info ? 5 : g.info.decision in VERDICT_RANK ? VERDICT_RANK[g.info.decision] : 4);
  const latest = (g) => (g.latest === null ? -Infinity : g.latest);
  const SORTS = {
    sensor: byId,
    verdict: (a, b) => rank(a) - rank(b) || byId(a, b),
    leaks: (a, b) => b.leaks - a.leaks || byId(a, b),
    latest: (a, b) => latest(b) - latest(a) || byId(a, b),
  };

  let lastDomainKey = null;
  let lastSort = null;

  function applyFilters(keepPage) {
    const f = readFilters();
    const badRange = f.from && f.to && f.from > f.to;
    const recFilter = Boolean(f.status || f.from || f.to);
    let recsShown = 0;
    const shown = [];
    for (const g of model.groups) {
      let visible = 0;
      for (const id of g.ids) {
        const pass = !badRange && recordingPasses(id, f);
        if (view.marks[id].hidden === pass) view.marks[id].hidden = !pass;
        if (pass) visible += 1;
      }
      const ok = !badRange && sensorPasses(g, f) && (!recFilter || visible > 0);
      if (ok) {
        shown.push(g);
        recsShown += visible;
        resetRoving(g);
      }
    }
    if (f.sort !== lastSort) {
      // Moving the existing rows keeps each row's marks and focus state; nothing is rebuilt.
      const order = model.groups.slice().sort(SORTS[f.sort] || byId);
      const frag = document.createDocumentFragment();
      for (const g of order) frag.appendChild(view.rows.get(g.id));
      $('sensor-rows').appendChild(frag);
      lastSort = f.sort;
    }
    shown.sort(SORTS[f.sort] || byId);
    view.shown = shown;
    if (!keepPage) view.page = 0;
    showPage();
    // Placed after the rows off the page are hidden: the axis reads a width, and that layout then covers one page.
    const domainKey = f.from + '|' + f.to;
    if (domainKey !== lastDomainKey) {
      view.domain = computeDomain(f.from, f.to);
      lastDomainKey = domainKey;
      placeMarks();
    }
    const sensorsTotal = model.groups.length;
    $('filter-count').textContent = badRange
      ? 'The "from" date is after the "to" date: no recording can match.'
      : 'Showing ' + shown.length + ' of ' + sensorsTotal + (sensorsTotal === 1 ? ' sensor' : ' sensors') +
        ' and ' + recsShown + ' of ' + model.recs.length + ' recordings.';
  }

  function showPage() {
    const pages = Math.max(1, Math.ceil(view.shown.length / PAGE_SIZE));
    view.page = Math.min(Math.max(0, view.page), pages - 1);
    const onPage = new Set(view.shown.slice(view.page * PAGE_SIZE, (view.page + 1) * PAGE_SIZE));
    for (const g of model.groups) {
      const row = view.rows.get(g.id);
      const hide = !onPage.has(g);
      if (row.hidden !== hide) row.hidden = hide;
    }
    $('page-info').textContent = 'Sensors page ' + (view.page + 1) + ' of ' + pages;
    $('page-prev').disabled = view.page === 0;
    $('page-next').disabled = view.page >= pages - 1;
    $('page-prev').parentNode.hidden = pages === 1;
  }

  // One tab stop per sensor strip; the arrow keys move between its recordings (a roving tabindex).
  function resetRoving(g) {
    let first = true;
    for (const id of g.ids) {
      const b = view.marks[id];
      const stop = first && !b.hidden;
      if (stop) first = false;
      b.tabIndex = stop ? 0 : -1;
    }
  }

  function onStripKey(event) {
    const b = event.target;
    if (!b.classList || !b.classList.contains('mark')) return;
    const keys = ['ArrowLeft', 'ArrowRight', 'Home', 'End'];
    if (keys.indexOf(event.key) < 0) return;
    const marks = Array.from(b.closest('tr').querySelectorAll('button.mark')).filter((m) => !m.hidden);
    const at = marks.indexOf(b);
    let to = at;
    if (event.key === 'ArrowLeft') to = Math.max(0, at - 1);
    else if (event.key === 'ArrowRight') to = Math.min(marks.length - 1, at + 1);
    else if (event.key === 'Home') to = 0;
    else to = marks.length - 1;
    event.preventDefault();
    b.tabIndex = -1;
    marks[to].tabIndex = 0;
    marks[to].focus();
  }

  function wireSensors() {
    const rows = $('sensor-rows');
    rows.addEventListener('click', (event) => {
      const b = event.target.closest('button.mark');
      if (b) {
        resetRovingTo(b);
        openDetail(Number(b.getAttribute('data-id')), b);
      }
    });
    rows.addEventListener('keydown', onStripKey);
    const form = $('filters');
    form.addEventListener('submit', (event) => event.preventDefault());
    // A select fires both input and change; the second finds nothing new to do.
    let applied = JSON.stringify(readFilters());
    const refilter = () => {
      const now = JSON.stringify(readFilters());
      if (now !== applied) {
        applied = now;
        applyFilters(false);
      }
    };
    form.addEventListener('input', refilter);
    form.addEventListener('change', refilter);
    // The reset event fires before the fields are cleared.
    form.addEventListener('reset', () => setTimeout(refilter, 0));
    $('page-prev').addEventListener('click', () => { view.page -= 1; showPage(); });
    $('page-next').addEventListener('click', () => { view.page += 1; showPage(); });
    let pending = false;
    window.addEventListener('resize', () => {
      if (pending) return;
      pending = true;
      requestAnimationFrame(() => { pending = false; renderAxis(); });
    });
    const nights = model.nights.filter(Boolean).sort();
    if (nights.length) {
      for (const id of ['filter-from', 'filter-to']) {
        $(id).min = nights[0];
        $(id).max = nights[nights.length - 1];
      }
    }
  }

  function resetRovingTo(b) {
    for (const m of b.closest('tr').querySelectorAll('button.mark')) m.tabIndex = m === b ? 0 : -1;
  }

  /* ---------- labels ---------- */

  const labels = {store: {}, key: String((D && D.storage_key) || 'leak-review')};

  function loadLabels() {
    let raw = null;
    try {
      raw = window.localStorage.getItem(labels.key);
    } catch (err) {
      storageProblem(err);
    }
    if (!raw) return;
    let parsed = null;
    try {
      parsed = JSON.parse(raw);
    } catch (err) {
      parsed = null;
    }
    if (!parsed || typeof parsed !== 'object') return;
    for (const path of Object.keys(parsed)) {
      const e = parsed[path];
      if (e && typeof e === 'object' && LABEL_VALUES.indexOf(e.label) >= 0) {
        labels.store[path] = {digest: e.digest === undefined ? null : e.digest, label: e.label};
      }
    }
  }

  function storageProblem(err) {
    const p = $('storage-problem');
    p.hidden = false;
    p.textContent = 'This browser does not keep the labels (' + (err && err.name ? err.name : 'storage refused') +
      '): export labels.csv before closing the page.';
  }

  function saveLabels() {
    try {
      window.localStorage.setItem(labels.key, JSON.stringify(labels.store));
      return true;
    } catch (err) {
      storageProblem(err);
      return false;
    }
  }

  // A stored label counts only for the audio it was given to: a file changed since then is not the same recording.
  function labelOf(r) {
    const e = labels.store[r.path];
    return e && r.digest && e.digest === r.digest ? e.label : null;
  }

  function staleLabel(r) {
    const e = labels.store[r.path];
    return e && r.digest && e.digest !== r.digest ? e : null;
  }

  function setLabel(id, value) {
    const r = model.recs[id];
    if (!r.digest) return;
    if (value === null) delete labels.store[r.path];
    else labels.store[r.path] = {digest: r.digest, label: value};
    const saved = saveLabels();
    syncLabel(id);
    updateLabelCount();
    if (value === null) announce('label cleared: ' + r.path);
    else announce((saved ? 'label saved: ' : 'label kept in this page only: ') + value + ', ' + r.path);
  }

  function syncLabel(id) {
    const value = labelOf(model.recs[id]);
    for (const input of document.querySelectorAll('input[type=radio][data-rec="' + id + '"]')) {
      input.checked = input.value === value;
    }
  }

  function updateLabelCount() {
    const queue = D.queue || [];
    const done = queue.filter((q) => labelOf(model.recs[q.id])).length;
    $('labelled-count').textContent = done + ' of ' + queue.length + ' labelled';
    let other = 0;
    model.recs.forEach((r, id) => { if (!model.queued.has(id) && labelOf(r)) other += 1; });
    $('labelled-other').textContent = other ? '(and ' + other + ' outside the queue)' : '';
  }

  function makeLabelGroup(r, name) {
    const fs = el('fieldset', {class: 'label-group'});
    fs.appendChild(el('legend', null, 'Label for ' + r.path));
    const current = labelOf(r);
    for (const value of LABEL_VALUES) {
      const label = el('label');
      const input = el('input', {type: 'radio', name: name, value: value, 'data-rec': r.id});
      input.checked = value === current;
      input.disabled = !r.digest;
      label.appendChild(input);
      label.appendChild(document.createTextNode(' ' + value));
      fs.appendChild(label);
    }
    const clear = el('button', {type: 'button', class: 'clear-label', 'data-rec': r.id,
      'aria-label': 'clear label for ' + r.path}, 'clear label');
    clear.disabled = !r.digest;
    fs.appendChild(clear);
    if (!r.digest) {
      fs.appendChild(el('p', {class: 'reason'}, 'Cannot be labelled: the audio file could not be read, so there is ' +
        'no digest to tie a label to' + (r.problem ? ' (' + r.problem + ')' : '') + '.'));
    }
    const stale = staleLabel(r);
    if (stale) {
      fs.appendChild(el('p', {class: 'reason'}, 'A label "' + stale.label + '" was given to an earlier version of ' +
        'this file (digest ' + stale.digest + '); it is not used.'));
    }
    return fs;
  }

  function onLabelEvent(event) {
    const t = event.target;
    if (event.type === 'change' && t.type === 'radio' && t.hasAttribute('data-rec') && t.checked) {
      setLabel(Number(t.getAttribute('data-rec')), t.value);
    } else if (event.type === 'click' && t.classList && t.classList.contains('clear-label')) {
      setLabel(Number(t.getAttribute('data-rec')), null);
    }
  }

  function csvField(text) {
    const s = String(text === null || text === undefined ? '' : text);
    return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }

  function labelsCsv() {
    const columns = D.label_columns || ['path', 'audio_digest', 'label'];
    const lines = [columns.join(',')];
    const row = (r) => lines.push([csvField(r.path), csvField(r.digest), csvField(labelOf(r))].join(','));
    for (const q of D.queue || []) {
      const r = model.recs[q.id];
      if (r && labelOf(r)) row(r);
    }
    model.recs.forEach((r, id) => { if (!model.queued.has(id) && labelOf(r)) row(r); });
    return {text: lines.join('\r\n') + '\r\n', rows: lines.length - 1};
  }

  function exportLabels() {
    const csv = labelsCsv();
    const url = URL.createObjectURL(new Blob([csv.text], {type: 'text/csv;charset=utf-8'}));
    const a = el('a', {href: url, download: 'labels.csv'});
    a.hidden = true;
    document.body.appendChild(a);
    a.click();
    a.remove();
    // Revoking at once can cancel the download in some browsers; the URL is released a moment later.
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    announce('labels.csv exported with ' + csv.rows + (csv.rows === 1 ? ' label' : ' labels'));
  }

  /* ---------- queue ---------- */

  function queueItem(q, position) {
    const r = model.recs[q.id];
    const li = el('li', {'data-id': q.id});
    const open = el('button', {type: 'button', class: 'q-path q-open', 'data-rec': q.id,
      'aria-label': 'show ' + r.path + ' in the recording detail (queue position ' + position + ')'}, r.path);
    li.appendChild(open);
    const meta = el('p', {class: 'q-meta'});
    meta.appendChild(el('span', {class: r.leak === true ? 'q-decision-leak' : ''}, decisionText(r)));
    meta.appendChild(document.createTextNode(
      ' · sensor ' + (r.sensor || '(none)') + ' · ' + showTime(r.time) +
      ' · probability ' + num(r.leak_probability) + ' · score ' + num(r.decision_score) +
      (r.decision_cutoff === null || r.decision_cutoff === undefined ? '' : ' (cutoff ' + num(r.decision_cutoff) + ')')));
    li.appendChild(meta);
    li.appendChild(el('p', {class: 'q-why'}, q.why));
    li.appendChild(makeLabelGroup(r, 'label-' + q.id));
    return li;
  }

  function renderQueue() {
    $('queue-rule').textContent = D.queue_rule || '';
    const frag = document.createDocumentFragment();
    (D.queue || []).forEach((q, k) => { if (model.recs[q.id]) frag.appendChild(queueItem(q, k + 1)); });
    const ol = $('queue');
    ol.appendChild(frag);
    if (!(D.queue || []).length) ol.appendChild(el('li', {class: 'empty'}, 'The queue is empty.'));
    ol.addEventListener('click', (event) => {
      const b = event.target.closest('button.q-open');
      if (b) openDetail(Number(b.getAttribute('data-rec')), b);
    });
    $('export').addEventListener('click', exportLabels);
  }

  /* ---------- recording detail ---------- */

  const detail = {id: null, opener: null, stopAt: null};

  function fact(dl, name, value) {
    dl.appendChild(el('dt', null, name));
    dl.appendChild(el('dd', null, value));
  }

  function scoreLine(r) {
    if (r.decision_score === null || r.decision_score === undefined) return 'no score';
    if (r.decision_cutoff === null || r.decision_cutoff === undefined) return num(r.decision_score, 3);
    const leak = r.decision_score >= r.decision_cutoff;
    return num(r.decision_score, 3) + (leak ? ' ≥ ' : ' < ') + 'cutoff ' + num(r.decision_cutoff, 3) +
      (leak ? ' → leak' : ' → no leak');
  }

  function renderFacts(r) {
    const dl = $('detail-facts');
    dl.textContent = '';
    fact(dl, 'Sensor', r.sensor || 'no sensor id');
    fact(dl, 'Time', showTime(r.time) + (model.nights[r.id] ? ' (night of ' + model.nights[r.id] + ')' : ''));
    fact(dl, 'Status', r.status);
    fact(dl, 'Quality', r.quality && r.quality.length ? r.quality.join(', ') : 'no flags');
    fact(dl, 'Decision', decisionText(r));
    fact(dl, 'Leak probability', num(r.leak_probability, 3));
    fact(dl, 'Decision score', scoreLine(r));
    fact(dl, 'Audio digest', r.digest || 'none (the file could not be read)');
    if (r.problem) fact(dl, 'Problem', r.problem);
  }

  function durationOf(r) {
    if (r.duration) return r.duration;
    const ends = (r.windows || []).map((w) => w[1]);
    return ends.length ? Math.max.apply(null, ends) : 1;
  }

  function niceStep(span, most) {
    const raw = span / most;
    const base = Math.pow(10, Math.floor(Math.log10(raw)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * base >= raw) return m * base;
    return 10 * base;
  }

  function hz(value) {
    return value >= 1000 ? (Math.round(value / 100) / 10) + ' kHz' : Math.round(value) + ' Hz';
  }

  // Every coordinate is a percentage of the plot, so the overlay follows the image at any size without script.
  function renderOverlay(r) {
    const o = $('overlay');
    o.textContent = '';
    const dur = durationOf(r);
    const pct = (v) => (v * 100).toFixed(3) + '%';
    const spoken = [];
    (r.windows || []).forEach((w, k) => {
      const a = w[0];
      const b = w[1];
      const s = w[2];
      const g = svg('g', {class: 'window', 'data-k': k});
      g.appendChild(svg('title', {}, 'window ' + (k + 1) + ': ' + seconds(a) + '–' + seconds(b) + ' s, ' +
        (s === null ? 'silent' : 'leak score ' + num(s))));
      g.appendChild(svg('rect', {class: 'win-edge', x: pct(a / dur), y: 0, width: pct((b - a) / dur), height: '100%'}));
      const mid = pct((a + b) / 2 / dur);
      if (s === null) {
        g.appendChild(svg('text', {class: 'silent-text', x: mid, y: '50%', 'text-anchor': 'middle'}, 'silent'));
      } else {
        const y = pct(1 - s);
        const line = {x1: pct(a / dur), x2: pct(b / dur), y1: y, y2: y};
        g.appendChild(svg('line', Object.assign({class: 'score-halo'}, line)));
        g.appendChild(svg('line', Object.assign({class: 'score'}, line)));
        g.appendChild(svg('text', {class: 'score-text', x: mid, y: y, dy: s > 0.85 ? '1.2em' : '-0.4em',
          'text-anchor': 'middle'}, num(s)));
      }
      o.appendChild(g);
      spoken.push('window ' + (k + 1) + ' ' + seconds(a) + ' to ' + seconds(b) + ' s: ' +
        (s === null ? 'silent' : num(s)));
    });
    drawAxes(o, r, dur, pct);
    o.setAttribute('aria-label', 'Leak score per window of ' + r.path + (spoken.length ? ': ' + spoken.join('; ')
      : ': no windows'));
  }

  function drawAxes(o, r, dur, pct) {
    const step = niceStep(dur, 8);
    for (let t = 0; t <= dur + 1e-9; t += step) {
      o.appendChild(svg('rect', {class: 'tick', x: pct(t / dur), y: '100%', width: 1, height: 5}));
      o.appendChild(svg('text', {x: pct(t / dur), y: '100%', dy: '1.5em', 'text-anchor': 'middle'}, seconds(t)));
    }
    o.appendChild(svg('text', {class: 'axis-title', x: '100%', y: '100%', dy: '2.8em', 'text-anchor': 'end'},
      'time (s)'));
    for (let k = 0; k <= 4; k += 1) {
      const y = pct(1 - k / 4);
      o.appendChild(svg('rect', {class: 'tick', x: '100%', y: y, width: 5, height: 1}));
      o.appendChild(svg('text', {x: '100%', dx: 8, y: y, dy: '0.35em'}, String(k / 4)));
    }
    o.appendChild(svg('text', {class: 'axis-title', x: '100%', dx: 8, y: 0, dy: '-0.8em'}, 'score'));
    if (r.max_hz) {
      const hzStep = niceStep(r.max_hz, 4);
      for (let f = 0; f <= r.max_hz + 1e-9; f += hzStep) {
        const y = pct(1 - f / r.max_hz);
        o.appendChild(svg('rect', {class: 'tick', x: -5, y: y, width: 5, height: 1}));
        o.appendChild(svg('text', {x: -8, y: y, dy: '0.35em', 'text-anchor': 'end'}, hz(f)));
      }
      o.appendChild(svg('text', {class: 'axis-title', x: -8, y: 0, dy: '-0.8em', 'text-anchor': 'end'}, 'frequency'));
    }
  }

  function renderSpectrogram(r) {
    const img = $('spectrogram');
    const caption = $('spectro-caption');
    if (r.spectrogram) {
      img.hidden = false;
      img.setAttribute('src', r.spectrogram);
      img.setAttribute('alt', 'Spectrogram of ' + r.path + ', ' + seconds(durationOf(r)) + ' s' +
        (r.max_hz ? ', 0 to ' + hz(r.max_hz) : ''));
      caption.textContent = 'Spectrogram with each window\'s leak score (yellow line, right axis 0 to 1); ' +
        'dashed boxes are the windows.';
    } else {
      img.hidden = true;
      img.removeAttribute('src');
      img.setAttribute('alt', '');
      caption.textContent = 'No spectrogram for this recording: ' + (r.problem || 'none was made') + '.' +
        ((r.windows || []).length ? ' The window scores are drawn on an empty plot.' : '');
    }
    // A plot with neither an image nor a window to draw would only be an empty box.
    $('plot').hidden = !r.spectrogram && !(r.windows || []).length;
    renderOverlay(r);
  }

  function noAudioReason(r) {
    if (r.problem) return r.problem;
    if (D.audio === 'none') return 'the review was built without audio';
    if (D.audio === 'queue') return 'this folder keeps audio for the review queue only';
    return 'no audio file was written for it';
  }

  function renderAudio(r) {
    const player = $('player');
    const note = $('no-audio');
    player.pause();
    detail.stopAt = null;
    if (r.audio) {
      player.hidden = false;
      note.hidden = true;
      player.setAttribute('src', r.audio);
      player.setAttribute('aria-label', 'audio of ' + r.path);
    } else {
      player.removeAttribute('src');
      player.load();
      player.hidden = true;
      note.hidden = false;
      note.textContent = 'no audio in this folder: ' + noAudioReason(r);
    }
    const list = $('windows');
    list.textContent = '';
    (r.windows || []).forEach((w, k) => {
      const li = el('li');
      const b = el('button', {type: 'button', class: 'play-window', 'data-start': w[0], 'data-end': w[1]},
        'play window ' + (k + 1) + ' (' + seconds(w[0]) + '–' + seconds(w[1]) + ' s)');
      b.disabled = !r.audio;
      li.appendChild(b);
      li.appendChild(el('span', {class: 'score-note'}, w[2] === null ? 'silent' : 'score ' + num(w[2])));
      list.appendChild(li);
    });
  }

  function playWindow(b) {
    const player = $('player');
    const start = Number(b.getAttribute('data-start'));
    detail.stopAt = Number(b.getAttribute('data-end'));
    player.currentTime = start;
    const playing = player.play();
    if (playing && playing.catch) playing.catch((err) => announce('the audio could not be played: ' + err.message));
  }

  function wireDetail() {
    const player = $('player');
    // A window button plays that window only; any other seek or play lets the recording run on.
    player.addEventListener('timeupdate', () => {
      if (detail.stopAt !== null && player.currentTime >= detail.stopAt) {
        detail.stopAt = null;
        player.pause();
      }
    });
    player.addEventListener('seeking', () => {
      if (detail.stopAt !== null && player.currentTime >= detail.stopAt) detail.stopAt = null;
    });
    $('windows').addEventListener('click', (event) => {
      const b = event.target.closest('button.play-window');
      if (b) playWindow(b);
    });
  }

  function openDetail(id, opener) {
    const r = model.recs[id];
    if (!r) return;
    if (detail.id !== null) {
      const old = view.marks[detail.id];
      if (old) old.removeAttribute('aria-current');
      const oldItem = document.querySelector('#queue > li[data-id="' + detail.id + '"]');
      if (oldItem) oldItem.classList.remove('current');
    }
    detail.id = id;
    detail.opener = opener || null;
    if (view.marks[id]) view.marks[id].setAttribute('aria-current', 'true');
    const item = document.querySelector('#queue > li[data-id="' + id + '"]');
    if (item) item.classList.add('current');
    $('detail-empty').hidden = true;
    $('detail-body').hidden = false;
    $('detail-path').textContent = r.path;
    renderFacts(r);
    renderSpectrogram(r);
    renderAudio(r);
    const box = $('detail-label');
    box.textContent = '';
    box.appendChild(makeLabelGroup(r, 'detail-label'));
    const back = el('button', {type: 'button', id: 'detail-back'}, opener && opener.classList.contains('mark')
      ? 'back to the sensor strip' : 'back to the queue');
    back.hidden = !opener;
    back.addEventListener('click', () => { if (detail.opener) detail.opener.focus(); });
    box.appendChild(back);
    const heading = $('detail-heading');
    heading.textContent = 'Recording detail: ' + r.path;
    heading.scrollIntoView({block: 'start'});
    heading.focus({preventScroll: true});
  }

  /* ---------- start ---------- */

  function announce(text) {
    const live = $('announce');
    // Clearing first makes a repeated message ("label saved" twice) be read again.
    live.textContent = '';
    requestAnimationFrame(() => { live.textContent = text; });
  }

  function fail(text) {
    const p = $('load-error');
    p.hidden = false;
    p.textContent = text;
    for (const id of ['sensors', 'detail', 'review']) $(id).hidden = true;
  }

  function start() {
    if (!D || typeof D !== 'object' || !Array.isArray(D.recordings)) {
      fail('data.js is missing or did not define window.LEAK_REVIEW: open index.html inside the folder that ' +
        '`python -m leak_lightning review` wrote, next to its data.js.');
    } else if (D.format !== 1) {
      fail('data.js has format ' + D.format + ', but this page reads format 1: rebuild the folder with ' +
        '`python -m leak_lightning review`.');
    } else {
      buildModel();
      renderHeader();
      buildRows();
      wireSensors();
      applyFilters(false);
      loadLabels();
      renderQueue();
      wireDetail();
      document.addEventListener('change', onLabelEvent);
      document.addEventListener('click', onLabelEvent);
      window.addEventListener('storage', (event) => {
        if (event.key !== labels.key) return;
        labels.store = {};
        loadLabels();
        model.recs.forEach((r, id) => syncLabel(id));
        updateLabelCount();
      });
      updateLabelCount();
      window.leakReview = {labelsCsv: () => labelsCsv().text, openDetail: openDetail};
    }
    document.body.dataset.ready = '1';
  }

  start();
}());

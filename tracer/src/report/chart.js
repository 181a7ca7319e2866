// Draws the report's charts as inline SVG from the JSON in #report-data. No network, no
// libraries. Every text from the timeline is set with textContent (never parsed as
// HTML). When done, body[data-rendered] holds the number of charts drawn; any error is
// recorded in body[data-error] (window.onerror is installed at the top of <body>).
(function () {
  'use strict';
  var SVG = 'http://www.w3.org/2000/svg';
  var body = document.body;
  var area = document.getElementById('chart-area');
  var drawn = 0;
  var W = 1100;

  function fail(where, e) {
    var msg = where + ': ' + (e && e.message ? e.message : String(e));
    body.dataset.error = msg;
    var p = document.createElement('p');
    p.className = 'chart-error';
    p.textContent = 'Chart failed (' + msg + ')';
    area.appendChild(p);
  }

  function el(name, attrs, parent) {
    var n = document.createElementNS(SVG, name);
    for (var k in attrs) {
      if (Object.prototype.hasOwnProperty.call(attrs, k)) n.setAttribute(k, String(attrs[k]));
    }
    if (parent) parent.appendChild(n);
    return n;
  }

  function text(parent, x, y, s, attrs) {
    var a = attrs || {};
    a.x = x;
    a.y = y;
    var t = el('text', a, parent);
    t.textContent = s;
    return t;
  }

  function tip(parent, s) {
    el('title', {}, parent).textContent = s;
  }

  var UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

  function byteUnit(max) {
    var u = 0;
    while (max >= 1024 && u < UNITS.length - 1) { max /= 1024; u++; }
    return u;
  }

  function fmtBytes(b) {
    var u = byteUnit(b);
    return u === 0 ? Math.round(b) + ' B' : (b / Math.pow(1024, u)).toFixed(1) + ' ' + UNITS[u];
  }

  function fmtCount(n) {
    if (n >= 1e9) return (n / 1e9).toFixed(1) + 'G';
    if (n >= 1e6) return (n / 1e6).toFixed(1) + 'M';
    if (n >= 1e4) return (n / 1e3).toFixed(1) + 'k';
    return String(Math.round(n * 10) / 10);
  }

  function fmtSeconds(s) {
    var a = Math.abs(s);
    if (a >= 7200) return (s / 3600).toFixed(1) + ' h';
    if (a >= 120) return (s / 60).toFixed(1) + ' min';
    return (Math.round(s * 1000) / 1000) + ' s';
  }

  // Round tick values covering [0, hi] (about n of them).
  function ticks(hi, n) {
    if (!(hi > 0) || !isFinite(hi)) hi = 1;
    var raw = hi / n;
    var p = Math.pow(10, Math.floor(Math.log(raw) / Math.LN10));
    var m = raw / p;
    var step = (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
    var out = [];
    // Up to the first tick at or above `hi`, so the top tick bounds the data.
    for (var i = 0; out.length < 50; i++) {
      out.push(i * step);
      if (i * step >= hi * (1 - 1e-9)) break;
    }
    return { values: out, step: step };
  }

  function ticksBetween(lo, hi, n) {
    var t = ticks(hi - lo, n);
    var out = [];
    var first = Math.ceil(lo / t.step) * t.step;
    for (var v = first; v <= hi + t.step * 1e-9 && out.length < 50; v += t.step) out.push(v);
    return out;
  }

  function finiteMax(series) {
    var m = 0;
    series.forEach(function (s) {
      (s.values || []).forEach(function (v) {
        if (typeof v === 'number' && isFinite(v) && v > m) m = v;
      });
    });
    return m;
  }

  function frame(title, height) {
    var fig = document.createElement('figure');
    fig.className = 'chart';
    var svg = el('svg', {
      viewBox: '0 0 ' + W + ' ' + height, width: W, height: height, role: 'img'
    });
    text(svg, 8, 20, title, { 'class': 'chart-title' });
    return { fig: fig, svg: svg };
  }

  // spec: {title, x: [x0, x1], t: [], series: [{name, color, values}], bytes, epochs}
  function lineChart(spec) {
    var H = 300, L = 86, R = 24, T = 40, B = 40;
    var f = frame(spec.title, H);
    var svg = f.svg;
    var x0 = spec.x[0], x1 = spec.x[1];
    spec.t.forEach(function (t) {
      if (t < x0) x0 = t;
      if (t > x1) x1 = t;
    });
    if (!(x1 > x0)) x1 = x0 + 1;
    var pw = W - L - R, ph = H - T - B;
    var sx = function (v) { return L + (v - x0) / (x1 - x0) * pw; };
    var max = finiteMax(spec.series);
    var unit = spec.bytes ? byteUnit(max) : 0;
    var scale = Math.pow(1024, unit);
    var yt = ticks(max / scale, 5);
    var ymax = yt.values[yt.values.length - 1] * scale;
    if (!(ymax > 0)) ymax = 1;
    var sy = function (v) { return T + ph - v / ymax * ph; };

    (spec.epochs || []).forEach(function (e) {
      var a = Math.max(x0, e.x0), b = Math.min(x1, e.x1);
      if (!(b >= a)) return;
      var r = el('rect', {
        x: sx(a), y: T, width: Math.max(2, sx(b) - sx(a)), height: ph, 'class': 'epoch'
      }, svg);
      tip(r, 'fork epoch ' + e.label + ': ' + fmtSeconds(e.x0) + ' to ' + fmtSeconds(e.x1));
      text(svg, sx(a) + 4, T + 14, e.label, { 'class': 'epoch-label' });
    });

    yt.values.forEach(function (v) {
      var y = sy(v * scale);
      el('line', { x1: L, x2: L + pw, y1: y, y2: y, 'class': 'grid' }, svg);
      var label = spec.bytes
        ? (unit === 0 ? v : v.toFixed(v % 1 === 0 ? 0 : 1)) + ' ' + UNITS[unit]
        : fmtCount(v);
      text(svg, L - 6, y + 4, label, { 'class': 'axis', 'text-anchor': 'end' });
    });
    ticksBetween(x0, x1, 10).forEach(function (v) {
      var x = sx(v);
      el('line', { x1: x, x2: x, y1: T, y2: T + ph, 'class': 'grid' }, svg);
      text(svg, x, T + ph + 16, fmtSeconds(v), { 'class': 'axis', 'text-anchor': 'middle' });
    });
    text(svg, L + pw, H - 4, 'time since the start of the run', {
      'class': 'axis', 'text-anchor': 'end'
    });
    el('rect', { x: L, y: T, width: pw, height: ph, 'class': 'plot' }, svg);

    var lx = W - R;
    spec.series.slice().reverse().forEach(function (s) {
      var t = text(svg, lx, 20, s.name, { 'class': 'legend', 'text-anchor': 'end' });
      var w = s.name.length * 7 + 16;
      el('rect', { x: lx - w, y: 11, width: 10, height: 10, fill: s.color }, svg);
      lx -= w + 14;
      return t;
    });

    var points = 0;
    spec.series.forEach(function (s) {
      var d = '', run = [];
      var flush = function () {
        if (run.length === 1) {
          el('circle', { cx: run[0][0], cy: run[0][1], r: 2.5, fill: s.color }, svg);
        }
        run = [];
      };
      spec.t.forEach(function (t, i) {
        var v = s.values[i];
        if (typeof v !== 'number' || !isFinite(v)) { flush(); return; }
        var x = sx(t), y = sy(v);
        d += (run.length ? 'L' : 'M') + x.toFixed(1) + ' ' + y.toFixed(1);
        run.push([x, y]);
        points++;
      });
      flush();
      if (d) el('path', { d: d, stroke: s.color, 'class': 'line' }, svg);
    });
    if (points === 0) {
      text(svg, L + pw / 2, T + ph / 2, spec.empty, { 'class': 'empty', 'text-anchor': 'middle' });
    }
    f.fig.appendChild(svg);
    area.appendChild(f.fig);
  }

  function ellipsize(s, n) {
    return s.length <= n ? s : s.slice(0, n - 3) + '...';
  }

  // spec: {title, rows: [{label, value, note}]}
  function barChart(spec) {
    var rowH = 22, L = 330, R = 230, T = 36;
    var H = T + spec.rows.length * rowH + 12;
    var f = frame(spec.title, H);
    var svg = f.svg;
    var max = 1;
    spec.rows.forEach(function (r) { if (r.value > max) max = r.value; });
    var pw = W - L - R;
    spec.rows.forEach(function (r, i) {
      var y = T + i * rowH;
      var g = el('g', {}, svg);
      tip(g, r.label + ': ' + r.value + ' pages' + (r.note ? ', ' + r.note : ''));
      text(g, L - 8, y + 15, ellipsize(String(r.label), 46), {
        'class': 'bar-label', 'text-anchor': 'end'
      });
      el('rect', {
        x: L, y: y + 3, width: Math.max(1, r.value / max * pw), height: rowH - 6, 'class': 'bar'
      }, g);
      var v = r.value + ' pages (' + fmtBytes(r.value * 4096) + ')' + (r.note ? ', ' + r.note : '');
      text(g, L + r.value / max * pw + 6, y + 15, v, { 'class': 'bar-value' });
    });
    f.fig.appendChild(svg);
    area.appendChild(f.fig);
  }

  function run() {
    var data;
    try {
      data = JSON.parse(document.getElementById('report-data').textContent);
    } catch (e) {
      fail('report data', e);
      return;
    }
    var jobs = [
      ['memory chart', function () {
        lineChart({
          title: 'Memory: server RSS, fork child RSS and server swap (samples)',
          x: data.x, t: data.memory.t, series: data.memory.series, bytes: true,
          epochs: data.epochs, empty: 'no memory samples in this timeline'
        });
      }],
      ['fault rate chart', function () {
        lineChart({
          title: 'Faults per second: copy-on-write' +
            (data.rates.series.length > 1 ? ' and swap-in' : '') +
            ' (' + fmtSeconds(data.rates.bucket_s) + ' buckets), fork epochs shaded',
          x: data.x, t: data.rates.t, series: data.rates.series, bytes: false,
          epochs: data.epochs, empty: 'no time span in this timeline'
        });
      }]
    ];
    data.bars.forEach(function (b) {
      jobs.push([b.id, function () { barChart(b); }]);
    });
    jobs.forEach(function (j) {
      try {
        j[1]();
        drawn++;
      } catch (e) {
        fail(j[0], e);
      }
    });
  }

  run();
  body.dataset.rendered = String(drawn);
})();

// ideamill's dashboard: live updates (server-sent events), relative times
// that keep ticking, the charts, and messages for failed actions. The pages
// are rendered on the server; htmx fetches their parts again when the
// stream says something changed.
(function () {
  "use strict";

  var body = document.body;
  var skew = 0; // server clock minus this browser's clock, ms

  function serverNow() { return Date.now() + skew; }

  function syncClock(root) {
    var el = (root && root.querySelector && root.querySelector("[data-now]")) ||
      document.querySelector("[data-now]");
    if (root && root.hasAttribute && root.hasAttribute("data-now")) el = root;
    if (el) skew = Number(el.getAttribute("data-now")) - Date.now();
  }

  // "850ms", "12s", "3m20s", "2h5m", "3d4h": as the server writes them.
  function short(ms) {
    ms = Math.max(0, Math.round(ms));
    if (ms < 1000) return ms + "ms";
    var s = Math.floor(ms / 1000);
    if (s < 60) return s + "s";
    var m = Math.floor(s / 60), rs = s % 60;
    if (m < 60) return rs ? m + "m" + rs + "s" : m + "m";
    var h = Math.floor(m / 60), rm = m % 60;
    if (h < 48) return rm ? h + "h" + rm + "m" : h + "h";
    var d = Math.floor(h / 24), rh = h % 24;
    return rh ? d + "d" + rh + "h" : d + "d";
  }

  function tick() {
    var now = serverNow();
    document.querySelectorAll("time[data-ago]").forEach(function (t) {
      var at = Number(t.getAttribute("data-ago"));
      var d = now - at;
      t.textContent = d >= 0 ? (d < 1000 ? "just now" : short(d) + " ago") : "in " + short(-d);
      var warn = t.getAttribute("data-warn-after");
      if (warn) t.classList.toggle("late", d > Number(warn));
    });
    document.querySelectorAll("time[data-elapsed]").forEach(function (t) {
      t.textContent = short(now - Number(t.getAttribute("data-elapsed")));
    });
  }

  // ---- Live updates -------------------------------------------------------

  var live = document.getElementById("live");
  var pill = document.getElementById("verdict-pill");
  var lastMessage = 0;
  var pending = null;
  var lastRefresh = 0;

  function setLive(state, text) {
    if (!live) return;
    live.className = "live " + state;
    live.textContent = text;
  }

  function refresh() {
    // At most one refresh per 700 ms: a busy mill changes all the time.
    var wait = Math.max(0, 700 - (Date.now() - lastRefresh));
    if (pending) return;
    pending = setTimeout(function () {
      pending = null;
      lastRefresh = Date.now();
      if (window.htmx) window.htmx.trigger(body, "mill:change");
      chartsMaybe(false);
    }, wait);
  }

  function showVerdict(level, reason) {
    if (!pill || !level) return;
    pill.textContent = level;
    pill.className = "pill v-" + level.toLowerCase();
    pill.title = reason || "Nothing needs a look";
  }

  function connect() {
    var url = body.getAttribute("data-stream");
    if (!url || !window.EventSource) return;
    var es = new EventSource(url);
    var first = true;
    es.addEventListener("change", function (e) {
      lastMessage = Date.now();
      setLive("on", "live");
      var t = {};
      try { t = JSON.parse(e.data); } catch (_) { /* keep going */ }
      showVerdict(t.verdict, t.reason);
      if (first) { first = false; return; }
      refresh();
    });
    es.addEventListener("ping", function () {
      lastMessage = Date.now();
      setLive("on", "live");
    });
    es.onerror = function () {
      setLive("off", "reconnecting…");
    };
  }

  // Silence is news too: the server pings every 10 s.
  setInterval(function () {
    if (!lastMessage) return;
    var quiet = Date.now() - lastMessage;
    if (quiet > 25000) setLive("stale", "no word from the server for " + short(quiet));
  }, 1000);

  // ---- Keeping the page as it was across swaps ----------------------------

  // The items list is fetched by the filters (as they change) and by live
  // refreshes (with the filters it was drawn with). Only the newest request
  // may draw it, and a refresh is not sent while the filters say something
  // else than the list: otherwise a refresh sent with the old search could
  // land after the new search's answer and put the old list back.
  var resultsAsked = 0;
  function filtersMatch(results) {
    var form = document.getElementById("filters");
    var shown = results.getAttribute("data-url");
    if (!form || !shown) return true;
    var now = new URLSearchParams(new FormData(form));
    var was = new URLSearchParams(shown.split("?")[1] || "");
    // The select's `failed:CLASS` is drawn as `state=failed&failed=CLASS`.
    var state = now.get("state") || "";
    if (state.indexOf("failed:") === 0) {
      now.set("state", "failed");
      now.set("failed", state.slice(7));
    }
    return ["q", "state", "stage", "failed"].every(function (k) {
      return (now.get(k) || "") === (was.get(k) || "");
    });
  }
  document.addEventListener("htmx:beforeRequest", function (e) {
    var target = e.detail.target;
    if (!target || target.id !== "results") return;
    if (e.detail.elt === target && !filtersMatch(target)) {
      e.preventDefault();
      return;
    }
    e.detail.xhr.millAsked = ++resultsAsked;
  });

  var open = [];
  document.addEventListener("htmx:beforeSwap", function (e) {
    var target = e.detail.target;
    var asked = e.detail.xhr && e.detail.xhr.millAsked;
    if (target && target.id === "results" && asked && asked !== resultsAsked) {
      e.detail.shouldSwap = false;
      return;
    }
    open = [];
    if (target && target.querySelectorAll) {
      target.querySelectorAll("details[id]").forEach(function (d) {
        open.push([d.id, d.open]);
      });
    }
    // Errors come as JSON: say them, keep the page.
    var xhr = e.detail.xhr;
    if (xhr && xhr.status >= 400) {
      e.detail.shouldSwap = false;
      toast(errorText(xhr), true);
    }
  });
  document.addEventListener("htmx:afterSwap", function () {
    open.forEach(function (pair) {
      var d = document.getElementById(pair[0]);
      if (d && d.tagName === "DETAILS") d.open = pair[1];
    });
    open = [];
  });
  document.addEventListener("htmx:afterSettle", function (e) {
    syncClock(e.detail.elt);
    tick();
  });
  document.addEventListener("htmx:sendError", function () {
    toast("The server does not answer; it may be restarting.", true);
  });
  document.addEventListener("htmx:afterRequest", function (e) {
    var form = e.detail.elt;
    if (form && form.id === "add-form" && e.detail.successful) form.reset();
  });

  function errorText(xhr) {
    try {
      var j = JSON.parse(xhr.responseText);
      if (j && j.error && j.error.message) return j.error.message;
    } catch (_) { /* not JSON */ }
    return "The server answered " + xhr.status + ".";
  }

  function toast(text, bad) {
    var box = document.getElementById("toasts");
    if (!box) return;
    var t = document.createElement("div");
    t.className = "toast" + (bad ? " bad" : "");
    t.textContent = text;
    box.appendChild(t);
    setTimeout(function () { t.remove(); }, 8000);
  }

  // ---- Charts ---------------------------------------------------------------

  var charts = {};
  var hours = 6;
  var chartsAt = 0;

  function chartsMaybe(force) {
    if (!document.getElementById("chart-throughput") || !window.uPlot) return;
    if (!force && Date.now() - chartsAt < 15000) return;
    chartsAt = Date.now();
    fetch("/api/activity?hours=" + hours, { credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(draw)
      .catch(function () { /* the next change tries again */ });
  }

  function draw(data) {
    var b = data.buckets || [];
    var perHour = 3600000 / data.bucket_ms;
    var x = [], done = [], failed = [], rate = [], attempts = [];
    var total = 0;
    b.forEach(function (k) {
      // Each bucket drawn where it ends, stepping back over its span.
      x.push((k.start + data.bucket_ms) / 1000);
      done.push(k.items_done * perHour);
      failed.push(k.items_failed * perHour);
      attempts.push(k.attempts * perHour);
      rate.push(k.attempts ? (100 * k.failed_attempts) / k.attempts : null);
      total += k.attempts + k.items_done + k.items_failed;
    });
    plot("chart-throughput", [x, done, failed], [
      {},
      { label: "done / h", stroke: "#15803d", fill: "rgba(21,128,61,0.14)", width: 2, paths: stepped() },
      { label: "failed / h", stroke: "#c0262d", fill: "rgba(192,38,45,0.14)", width: 2, paths: stepped() },
    ], [{}, { size: 50 }], total === 0);
    plot("chart-failures", [x, rate, attempts], [
      {},
      { label: "failed attempts %", stroke: "#c0262d", width: 2, scale: "%", spanGaps: true, points: { show: true, size: 5, fill: "#c0262d" } },
      { label: "attempts / h", stroke: "#98a2b3", width: 1.5, scale: "n", dash: [4, 4] },
    ], [{}, { scale: "%", size: 54, values: function (u, v) { return v.map(function (t) { return t + "%"; }); } },
        { scale: "n", side: 1, size: 46, grid: { show: false } }], total === 0,
      { "%": { range: [0, 100] } });
  }

  // Each bucket a flat step: counts per bucket, not a trend between points.
  function stepped() {
    return window.uPlot.paths && window.uPlot.paths.stepped
      ? window.uPlot.paths.stepped({ align: -1 })
      : undefined;
  }

  function plot(id, series_data, series, axes, empty, scales) {
    var el = document.getElementById(id);
    if (!el) return;
    var width = el.clientWidth || 500;
    if (charts[id]) {
      charts[id].setData(series_data);
    } else {
      el.textContent = "";
      charts[id] = new window.uPlot({
        width: width,
        height: 200,
        series: series,
        axes: axes,
        scales: Object.assign({ x: { time: true } }, scales || {}),
        legend: { show: true, live: false },
        cursor: { drag: { x: false, y: false } },
      }, series_data, el);
    }
    el.classList.toggle("is-empty", !!empty);
    var note = el.parentNode.querySelector(".note");
    if (empty && !note) {
      note = document.createElement("div");
      note.className = "note muted";
      note.textContent = "Nothing finished in this window yet.";
      el.parentNode.appendChild(note);
    } else if (!empty && note) {
      note.remove();
    }
  }

  window.addEventListener("resize", function () {
    Object.keys(charts).forEach(function (id) {
      var el = document.getElementById(id);
      if (el) charts[id].setSize({ width: el.clientWidth, height: 200 });
    });
  });

  document.addEventListener("click", function (e) {
    var b = e.target.closest && e.target.closest(".range button[data-hours]");
    if (!b) return;
    hours = Number(b.getAttribute("data-hours"));
    b.parentNode.querySelectorAll("button").forEach(function (x) { x.classList.toggle("on", x === b); });
    chartsMaybe(true);
  });

  // ---- Start ---------------------------------------------------------------

  syncClock(document);
  tick();
  setInterval(tick, 1000);
  connect();
  chartsMaybe(true);
  setInterval(function () { chartsMaybe(true); }, 60000);
})();

// kiln's pages, live without reloads: plain JavaScript, no framework, served by the
// coordinator itself (GET /kiln.js). A run page follows the run's event stream
// (GET /v1/runs/{run}/stream): a log line is appended to its stage's tail; any other
// event (a stage starting or ending, a measurement, the end) fetches the page again
// and swaps its body in. The index page fetches itself every 3 s while runs are live.
"use strict";
(function () {
  const MAX_TAIL = 200000; // characters kept in one stage's tail
  let pending = null;
  // The last frame the page shows: the server renders it as data-seq, and events
  // up to it are already on the page.
  let shown = 0;

  async function swap() {
    pending = null;
    const r = await fetch(location.href, { credentials: "same-origin" });
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    const seq = Number(doc.body.dataset.seq || 0);
    document.body.replaceWith(doc.body);
    // Lines appended while the page was fetched are not in it: fetch again.
    if (seq < shown) soon();
    shown = Math.max(shown, seq);
  }

  function soon() {
    if (pending === null) pending = setTimeout(swap, 150);
  }

  function append(stage, text) {
    const pre = document.getElementById("tail-" + stage);
    if (!pre) return soon();
    pre.append(document.createTextNode((pre.textContent ? "\n" : "") + text));
    if (pre.textContent.length > MAX_TAIL) {
      pre.textContent = pre.textContent.slice(-MAX_TAIL / 2);
    }
  }

  function follow(run) {
    shown = Number(document.body.dataset.seq || 0);
    const es = new EventSource("/v1/runs/" + run + "/stream?after=" + shown);
    es.addEventListener("frame", function (e) {
      const f = JSON.parse(e.data);
      if (f.seq <= shown) return;
      shown = f.seq;
      const ev = f.event || {};
      if (ev.Log) {
        append(ev.Log.stage, ev.Log.text);
      } else {
        soon();
      }
      if (ev.RunFinished) es.close();
    });
    // The stream ends with the run: nothing more to follow.
    es.onerror = function () {
      if (document.body.dataset.live !== "1") es.close();
    };
  }

  function start() {
    const b = document.body;
    if (b.dataset.live !== "1") return;
    if (b.dataset.run) {
      follow(b.dataset.run);
    } else {
      setInterval(function () {
        if (document.body.dataset.live === "1") swap();
      }, 3000);
    }
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();

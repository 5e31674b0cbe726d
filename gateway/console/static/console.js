// The console's only script (no framework, nothing from elsewhere): the dashboard's
// live part is fetched again every few seconds and replaced, server-rendered as the
// page itself was; the time of the last refresh is shown. Forms work without it.
"use strict";
(function () {
  function stamp() {
    var el = document.getElementById("stamp");
    if (el) { el.textContent = new Date().toLocaleTimeString(document.documentElement.lang); }
  }
  function poll(box) {
    var every = Math.max(2, parseInt(box.getAttribute("data-every"), 10) || 10) * 1000;
    function again() {
      fetch(box.getAttribute("data-refresh"), { credentials: "same-origin", cache: "no-store" })
        .then(function (r) {
          if (r.redirected || !r.ok) { throw new Error("signed out or failed"); }
          return r.text();
        })
        .then(function (html) { box.innerHTML = html; stamp(); setTimeout(again, every); })
        .catch(function () { setTimeout(again, every * 3); });
    }
    setTimeout(again, every);
  }
  document.addEventListener("DOMContentLoaded", function () {
    stamp();
    var box = document.getElementById("live");
    if (box) { poll(box); }
    var lang = document.getElementById("lang");
    if (lang && lang.form) {  // switch as soon as a language is picked
      lang.addEventListener("change", function () { lang.form.submit(); });
    }
  });
})();

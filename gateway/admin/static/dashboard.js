// Auto-refresh: every few seconds, swap in the panels freshly rendered by the server (the same
// snapshot as /dashboard/data). No library; without JavaScript the page is simply static.
(function () {
  "use strict";
  function every() {
    return Number(document.body.dataset.refreshS || 10) * 1000;
  }
  async function refresh() {
    try {
      var response = await fetch("/dashboard/panels", { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401 || response.status === 403) {
        window.location.reload();
        return;
      }
      var panels = document.getElementById("panels");
      if (response.ok && panels) {
        panels.outerHTML = await response.text();
      }
    } catch (err) {
      // The gateway restarting or the network blipping: try again next tick.
    }
    window.setTimeout(refresh, every());
  }
  window.setTimeout(refresh, every());
})();

// Live refresh for the streamd console: re-request this page as a fragment and swap <main>.
// No framework, no build step. The interval comes from <main data-refresh-ms>; 0 = off.
(function () {
  "use strict";
  const main = document.getElementById("main");
  const live = document.getElementById("live");
  const updated = document.getElementById("updated");
  if (!main || !live) return;
  const every = parseInt(main.dataset.refreshMs || "0", 10) || 3000;
  let busy = false;

  async function refresh() {
    if (busy || !live.checked || document.hidden) return;
    busy = true;
    try {
      // A relative URL: the page may have been opened as http://user:pass@host/..., and a
      // URL with credentials cannot be fetched; the browser resends the cached login itself.
      const resp = await fetch(window.location.pathname + window.location.search, {
        headers: { "X-Console-Fragment": "1" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (!resp.ok) {
        updated.textContent = "refresh failed: HTTP " + resp.status;
        updated.classList.add("error");
        return;
      }
      const text = await resp.text();
      const holder = document.createElement("div");
      holder.innerHTML = text;
      const stamp = holder.querySelector("template#stamp");
      if (stamp) stamp.remove();
      main.innerHTML = holder.innerHTML;
      updated.textContent = "updated " + (stamp ? stamp.innerHTML : new Date().toLocaleTimeString());
      updated.classList.remove("error");
    } catch (err) {
      updated.textContent = "refresh failed: " + err;
      updated.classList.add("error");
    } finally {
      busy = false;
    }
  }

  window.setInterval(refresh, every);
  live.addEventListener("change", refresh);
})();

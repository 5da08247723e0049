// The weights panel: load it, adopt the fitted weights in the background, and reload it when
// the proposals change (the page's main part gets a new data-version then).
(function () {
  "use strict";
  const panel = document.getElementById("calibration");
  const main = document.getElementById("main");
  if (!panel) return;

  async function load(message, bad) {
    const response = await fetch("/ui/fragments/calibration", { credentials: "same-origin" });
    if (!response.ok) return;
    const typing = panel.contains(document.activeElement) && document.activeElement.value;
    if (typing && !message) return;
    panel.innerHTML = await response.text();
    if (message) {
      const status = panel.querySelector(".calibration-status");
      status.textContent = message;
      status.className = bad ? "calibration-status error" : "calibration-status";
    }
  }

  panel.addEventListener("submit", async function (event) {
    const form = event.target;
    if (!form.matches("form[data-calibration]")) return;
    event.preventDefault();
    const response = await fetch(form.action, {
      method: "POST", body: new FormData(form), credentials: "same-origin",
      headers: { "X-Requested-With": "fetch" },
    });
    if (response.ok) { await load(await response.text()); return; }
    let detail = response.statusText;
    try { detail = (await response.json()).detail; } catch (e) { /* plain text */ }
    await load(typeof detail === "string" ? detail : JSON.stringify(detail), true);
  });

  if (main) {
    new MutationObserver(function () { load(); })
      .observe(main, { attributes: true, attributeFilter: ["data-version"] });
  }
  load();
})();

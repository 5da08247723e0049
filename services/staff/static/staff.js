// The staff page's few lines of JavaScript: send forms in the background, refresh the main
// part when the matcher's state changes (polling), keep what the user is typing.
(function () {
  "use strict";
  const main = document.getElementById("main");
  const status = document.getElementById("status");
  if (!main) return;

  function say(text, bad) {
    status.textContent = text;
    status.className = bad ? "status error" : "status";
  }

  async function refresh() {
    const response = await fetch("/ui/fragments/main", { credentials: "same-origin" });
    if (response.status === 401) { window.location.reload(); return; }
    if (response.ok) main.innerHTML = await response.text();
  }

  async function poll() {
    try {
      const response = await fetch("/ui/version", { credentials: "same-origin" });
      if (response.ok) {
        const version = await response.text();
        const typing = main.contains(document.activeElement) &&
          document.activeElement.tagName === "INPUT" && document.activeElement.value;
        if (version !== main.dataset.version && !typing) {
          main.dataset.version = version;
          await refresh();
        }
      }
    } catch (error) { say("Verbindung unterbrochen – neuer Versuch …", true); }
  }

  async function send(form) {
    const response = await fetch(form.action, {
      method: "POST", body: new FormData(form), credentials: "same-origin",
      headers: { "X-Requested-With": "fetch" },
    });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail; } catch (e) { /* plain text */ }
      say(typeof detail === "string" ? detail : JSON.stringify(detail), true);
      return null;
    }
    return response;
  }

  document.addEventListener("submit", async function (event) {
    const form = event.target;
    if (form.matches("form[data-async]")) {
      event.preventDefault();
      if (await send(form)) { say("Gespeichert."); await refresh(); }
    } else if (form.id === "advice-form") {
      event.preventDefault();
      const response = await send(form);
      if (response) document.getElementById("advice-answer").innerHTML = await response.text();
    }
  });

  setInterval(poll, 2000);
})();

// The staff page's few lines of JavaScript: send forms in the background, refresh the main
// part when the matcher's state changes (polling), keep what the user is typing.
(function () {
  "use strict";
  const main = document.getElementById("main");
  const status = document.getElementById("status");
  if (!main) return;

  const adviceStatus = document.getElementById("advice-status");
  const cities = document.getElementById("advice-city");
  const timers = new Map();

  // A message where the action happened; it fades after a while so none stays stale.
  function show(where, text, bad, base) {
    where.textContent = text;
    where.className = base + (bad ? " error" : "");
    clearTimeout(timers.get(where));
    if (text && !bad) timers.set(where, setTimeout(function () { where.textContent = ""; }, 8000));
  }
  function say(text, bad) { show(status, text, bad, "status"); }

  function proposals() {
    const found = new Map();
    main.querySelectorAll("article.proposal").forEach(function (card) {
      found.set(card.dataset.newcomer, card.dataset.proposal);
    });
    return found;
  }

  function name(newcomer) {
    const card = main.querySelector('article[data-newcomer="' + newcomer + '"] .newcomer .name');
    return card ? card.textContent : newcomer;
  }

  async function refreshCities() {
    if (!cities) return;
    const response = await fetch("/ui/fragments/cities", { credentials: "same-origin" });
    if (!response.ok) return;
    const chosen = cities.value;
    cities.innerHTML = await response.text();
    if (chosen) cities.value = chosen;
  }

  let watch = null;

  // Which other pending proposals did the last decision change? The cards say why.
  function reportChanges() {
    if (!watch || Date.now() > watch.until) { watch = null; return; }
    const after = proposals();
    const changed = [];
    watch.before.forEach(function (id, newcomer) {
      if (newcomer !== watch.decided && after.get(newcomer) !== id) changed.push(newcomer);
    });
    after.forEach(function (id, newcomer) {
      if (newcomer !== watch.decided && !watch.before.has(newcomer)) changed.push(newcomer);
    });
    if (changed.length) {
      say("Gespeichert. Dadurch geändert: Vorschlag für " + changed.map(name).join(", ") +
          " (der Grund steht am Vorschlag).");
    }
  }

  async function refresh() {
    const response = await fetch("/ui/fragments/main", { credentials: "same-origin" });
    if (response.status === 401) { window.location.reload(); return; }
    if (response.ok) main.innerHTML = await response.text();
    reportChanges();
    await refreshCities();
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

  async function send(form, report) {
    const response = await fetch(form.action, {
      method: "POST", body: new FormData(form), credentials: "same-origin",
      headers: { "X-Requested-With": "fetch" },
    });
    if (!response.ok) {
      let detail = response.statusText;
      try { detail = (await response.json()).detail; } catch (e) { /* plain text */ }
      report(typeof detail === "string" ? detail : JSON.stringify(detail), true);
      return null;
    }
    return response;
  }

  document.addEventListener("submit", async function (event) {
    const form = event.target;
    if (form.matches("form[data-async]")) {
      event.preventDefault();
      say("");
      const card = form.closest("article.proposal");
      const decided = card ? card.dataset.newcomer : null;
      const before = proposals();
      if (await send(form, say)) {
        say("Gespeichert.");
        // The matcher re-plans after the decision, maybe a moment later: the refreshes of
        // the next seconds are compared with the proposals before it.
        watch = { before: before, decided: decided, until: Date.now() + 20000 };
        await refresh();
      }
    } else if (form.id === "advice-form") {
      event.preventDefault();
      const local = function (text, bad) { show(adviceStatus, text, bad, "status-inline"); };
      local("Wird gesucht …");
      const response = await send(form, local);
      if (response) {
        document.getElementById("advice-answer").innerHTML = await response.text();
        local("");
      }
    }
  });

  if (cities) cities.addEventListener("focus", refreshCities);
  setInterval(poll, 2000);
})();

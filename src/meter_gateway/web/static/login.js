// Sign-in form: posts JSON to /login and goes on to ?next= (same-origin paths only).
"use strict";
(function () {
  const params = new URLSearchParams(location.search);
  let next = params.get("next") || "/ui/index.html";
  if (!next.startsWith("/") || next.startsWith("//")) next = "/ui/index.html";
  document.getElementById("next").value = next;
  const form = document.getElementById("login");
  const err = document.getElementById("error");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    const body = { username: form.username.value, password: form.password.value, next: next };
    let resp;
    try {
      resp = await fetch("/login", {
        method: "POST", credentials: "same-origin", redirect: "manual",
        headers: { "Content-Type": "application/json", "Accept": "application/json" },
        body: JSON.stringify(body),
      });
    } catch (e) {
      err.textContent = "The gateway does not answer.";
      err.hidden = false;
      return;
    }
    if (resp.ok || resp.type === "opaqueredirect" || (resp.status >= 300 && resp.status < 400)) {
      location.assign(next);
      return;
    }
    let text = "";
    try {
      const ct = resp.headers.get("Content-Type") || "";
      if (ct.includes("json")) { const j = await resp.json(); text = j.error || j.message || ""; }
      else text = (await resp.text()).trim();
    } catch (e) { /* keep the default text */ }
    err.textContent = text || (resp.status === 429 ? "Too many failed sign-ins; wait and try again."
      : "Wrong user name or password.");
    err.hidden = false;
    form.password.value = "";
    form.password.focus();
  });
})();

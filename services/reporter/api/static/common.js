// Shared page helpers: bearer token kept in sessionStorage (never in URLs or cookies).
"use strict";
const NF = (() => {
  const KEY = "noduleflow.token";
  const token = () => sessionStorage.getItem(KEY) || "";
  let onSignedIn = () => {};

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
    return node;
  }

  function showSignin(message) {
    const form = document.getElementById("signin");
    form.hidden = false;
    document.getElementById("signin-error").textContent = message || "";
    document.getElementById("token").focus();
  }

  async function api(path, asBlob = false, body = undefined) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = "Bearer " + token();
    const init = { headers, cache: "no-store" };
    if (body !== undefined) {
      init.method = "POST";
      init.body = JSON.stringify(body);
      headers["Content-Type"] = "application/json";
    }
    const res = await fetch(path, init);
    if (res.status === 401) {
      showSignin(token() ? "Token not accepted." : "");
      throw new Error("unauthorised");
    }
    if (!res.ok) {
      let text = res.statusText;
      try { text = (await res.json()).issue[0].diagnostics; } catch (e) { /* keep status */ }
      throw new Error(text);
    }
    document.getElementById("signin").hidden = true;
    document.getElementById("signout").hidden = !token();
    return asBlob ? res.blob() : res.json();
  }

  function stamp() {
    document.getElementById("updated").textContent = "Updated " + new Date().toLocaleTimeString();
  }

  function rads(category) {
    if (!category) return el("span", { class: "rads rads-none", text: "–" });
    return el("span", { class: "rads rads-" + category.toLowerCase(), text: category });
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }

  function dicomDate(da) {
    return da && da.length === 8 ? `${da.slice(0, 4)}-${da.slice(4, 6)}-${da.slice(6)}` : da || "";
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("signin").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, document.getElementById("token").value.trim());
      document.getElementById("token").value = "";
      onSignedIn();
    });
    document.getElementById("signout").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      location.reload();
    });
  });

  return { api, el, rads, when, dicomDate, stamp, setOnSignedIn: (f) => { onSignedIn = f; } };
})();

// Worklist: most suspicious first; refreshes itself every few seconds.
"use strict";
(() => {
  const REFRESH_MS = 5000;
  const form = document.getElementById("filters");
  const body = document.querySelector("#worklist tbody");

  function query() {
    const params = new URLSearchParams();
    for (const [k, v] of new FormData(form)) if (v) params.set(k, v);
    params.set("limit", "200");
    return "/api/worklist?" + params.toString();
  }

  function row(item) {
    const { el } = NF;
    const link = el("a", { href: "/studies/" + encodeURIComponent(item.study_uid),
                           text: item.patient_name || "(no name)" });
    const tr = el("tr", { class: "status-" + item.status, "data-study-uid": item.study_uid },
      el("td", {}, NF.rads(item.lung_rads)),
      el("td", { class: "num", text: item.largest_mm == null ? "" : item.largest_mm.toFixed(1) + " mm" }),
      el("td", { class: "num", text: item.nodules == null ? ""
        : item.nodules === 0 ? "none found"
        : String(item.nodules) + (item.masses ? ` (${item.masses} mass${item.masses > 1 ? "es" : ""})` : "") }),
      el("td", {}, link, el("div", { class: "muted small", text: item.patient_id || "" })),
      el("td", { text: item.accession_number || "" }),
      el("td", { text: NF.dicomDate(item.study_date) }),
      el("td", { text: item.description || "" }),
      el("td", { text: NF.when(item.received_at) }),
      el("td", {}, el("span", { class: "state state-" + item.status, text: item.status }),
        item.reason ? el("div", { class: "muted small", text: item.reason }) : ""),
      el("td", { class: "review", text: item.nodules ? reviewed(item) : "" }),
      el("td", {}, item.viewer_url ? el("a", { href: item.viewer_url, class: "viewer",
        target: "_blank", rel: "noopener noreferrer", text: "Open" }) : ""),
    );
    tr.addEventListener("click", (ev) => { if (ev.target.tagName !== "A") link.click(); });
    return tr;
  }

  function reviewed(item) {
    const open = item.nodules - item.accepted - item.rejected;
    return `${item.accepted} accepted · ${item.rejected} rejected · ${open} open`;
  }

  // Sortable headers: a button in each, keyboard-reachable; aria-sort says the order.
  const sortField = form.elements.namedItem("sort");
  for (const th of document.querySelectorAll("#worklist th[data-sort]")) {
    const button = NF.el("button", { type: "button", class: "sort", text: th.textContent });
    th.replaceChildren(button);
    button.addEventListener("click", () => {
      const column = th.dataset.sort;
      sortField.value = sortField.value === column ? "-" + column : column;
      for (const other of document.querySelectorAll("#worklist th[data-sort]")) other.removeAttribute("aria-sort");
      th.setAttribute("aria-sort", sortField.value.startsWith("-") ? "descending" : "ascending");
      refresh();
    });
  }
  let typing;
  form.elements.namedItem("q").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(refresh, 250);
  });
  form.addEventListener("submit", (ev) => { ev.preventDefault(); refresh(); });

  async function refresh() {
    try {
      const data = await NF.api(query());
      body.replaceChildren(...data.items.map(row));
      document.getElementById("empty").hidden = data.items.length > 0;
      document.getElementById("count").textContent = `${data.total} studies`;
      NF.stamp();
    } catch (e) {
      document.getElementById("updated").textContent = e.message === "unauthorised" ? "" : "Update failed: " + e.message;
    }
  }

  form.addEventListener("change", refresh);
  NF.setOnSignedIn(refresh);
  refresh();
  setInterval(refresh, REFRESH_MS);
})();

// Study page: facts, findings with key images, where the results went, analysis history.
"use strict";
(() => {
  const uid = document.getElementById("study-page").dataset.studyUid;
  const { el } = NF;
  const imageUrls = new Map();

  function facts(s, data) {
    const items = [["Patient", s.patient_name], ["Patient ID", s.patient_id],
      ["Accession", s.accession_number], ["Study date", NF.dicomDate(s.study_date)],
      ["Description", s.description], ["Instances", String(data.instances)],
      ["Received", NF.when(s.last_received_at)], ["AI status", data.status]];
    if (s.purged_at) items.push(["Images", s.images_purged
      ? `purged ${NF.when(s.purged_at)} (retention); results and findings are kept`
      : `purged ${NF.when(s.purged_at)}, received again ${NF.when(s.last_received_at)}`]);
    document.getElementById("study-facts").replaceChildren(
      ...items.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v || "–" })]));
  }

  async function keyImage(url) {
    if (!imageUrls.has(url)) imageUrls.set(url, URL.createObjectURL(await NF.api(url, true)));
    return imageUrls.get(url);
  }

  function reviewCell(f, analysis) {
    const cell = el("td", { class: "review" });
    const r = f.review;
    if (r) cell.append(el("div", { class: "decision decision-" + r.decision,
      text: `${r.decision} by ${r.actor}, ${NF.when(r.at)}` + (r.comment ? `: ${r.comment}` : "") }));
    if (!analysis) return cell;
    const label = `${f.finding_type || "nodule"} ${f.index}`;
    const comment = el("input", { type: "text", maxlength: "1000", class: "comment",
      "aria-label": `Comment on ${label}`, placeholder: "Comment (optional)" });
    const send = async (decision) => {
      try {
        await NF.api(`/api/studies/${encodeURIComponent(uid)}/findings/${f.index}/review`, false,
          { job_id: analysis, decision, comment: comment.value });
        await refresh();
      } catch (e) {
        document.getElementById("updated").textContent = "Review not saved: " + e.message;
      }
    };
    const accept = el("button", { type: "button", class: "accept", text: "Accept", "aria-label": `Accept ${label}` });
    const reject = el("button", { type: "button", class: "reject", text: "Reject", "aria-label": `Reject ${label}` });
    accept.addEventListener("click", () => send("accepted"));
    reject.addEventListener("click", () => send("rejected"));
    cell.append(comment, accept, reject);
    return cell;
  }

  function slice(f) {
    const cell = el("td", { class: "num" });
    cell.append(f.slice_number ? String(f.slice_number) : "–");
    if (f.viewer_url) cell.append(el("div", {}, el("a", { href: f.viewer_url, class: "viewer",
      target: "_blank", rel: "noopener noreferrer", text: "Open in viewer" })));
    return cell;
  }

  async function findings(list, analysis) {
    const rows = [];
    for (const f of list) {
      const cell = el("td");
      if (f.key_image) {
        const img = el("img", { class: "key-image", alt: `Key image of ${f.finding_type || "nodule"} ${f.index}` });
        img.src = await keyImage(f.key_image);
        cell.append(img);
      }
      rows.push(el("tr", {},
        el("td", { text: String(f.index) }), el("td", {}, NF.rads(f.lung_rads)),
        el("td", { class: "num", text: f.diameter_mm.toFixed(1) + " mm" }),
        el("td", { class: "num", text: `${f.long_axis_mm.toFixed(1)} × ${f.short_axis_mm.toFixed(1)} mm` }),
        el("td", { class: "num", text: f.volume_mm3.toFixed(0) + " mm³" }),
        el("td", { text: f.finding_type === "mass" ? `mass, ${f.kind}` : f.kind }),
        el("td", { class: "num", text: f.mean_hu.toFixed(0) }),
        slice(f),
        el("td", { class: "num", text: Math.round(f.confidence * 100) + " %" }), cell,
        reviewCell(f, analysis)));
    }
    document.querySelector("#findings tbody").replaceChildren(...rows);
  }

  function deliveries(list, fhir) {
    document.querySelector("#deliveries tbody").replaceChildren(...list.map((d) => el("tr", {},
      el("td", { text: d.kind.toUpperCase() }), el("td", { text: d.target }),
      el("td", {}, el("span", { class: "state state-" + d.state, text: d.state })),
      el("td", { class: "num", text: String(d.attempts) }),
      el("td", { text: d.last_error ? `${d.last_status} ${d.last_error}` : d.last_status })),
    ));
    const p = document.getElementById("fhir-link");
    p.replaceChildren(fhir ? el("span", {}, "FHIR report: ", el("code", { text: fhir.report })) : "");
  }

  function reviews(list) {
    document.querySelector("#reviews tbody").replaceChildren(...list.slice().reverse().map((r) => el("tr", {},
      el("td", { text: NF.when(r.at) }), el("td", { text: r.actor }),
      el("td", { text: `${r.index} (v${r.version})` }),
      el("td", {}, el("span", { class: "decision decision-" + r.decision, text: r.decision })),
      el("td", { text: r.comment || "" }))));
  }

  function jobs(list) {
    document.querySelector("#jobs tbody").replaceChildren(...list.slice().reverse().map((j) => el("tr", {},
      el("td", { text: "v" + j.version }),
      el("td", {}, el("span", { class: "state state-" + j.state, text: j.state })),
      el("td", { text: j.reason || "" }),
      el("td", { text: Object.entries(j.timings || {}).map(([k, v]) => `${k} ${Number(v).toFixed(2)}`).join(" · ") }),
      el("td", { text: ((j.details || {}).model || {}).name ? `${j.details.model.name} ${j.details.model.version}` : "" }))));
  }

  function found(list) {
    const masses = list.filter((f) => f.finding_type === "mass").length, nodules = list.length - masses;
    const parts = [];
    if (nodules) parts.push(`${nodules} nodule${nodules > 1 ? "s" : ""}`);
    if (masses) parts.push(`${masses} mass${masses > 1 ? "es" : ""}`);
    return parts.join(" and ") + " found.";
  }

  let lastSeen = "";
  async function refresh() {
    try {
      const data = await NF.api("/api/studies/" + encodeURIComponent(uid));
      const signature = JSON.stringify([data.status, data.jobs.length, data.deliveries, data.reviews]);
      facts(data.study, data);
      if (signature !== lastSeen) {
        lastSeen = signature;
        const n = data.findings.length;
        document.getElementById("conclusion").textContent = data.status !== "done"
          ? "Analysis " + data.status + "." : n ? found(data.findings) : "No nodules found.";
        await findings(data.findings, data.analysis);
        reviews(data.reviews || []);
        const viewer = document.getElementById("viewer-link");
        viewer.replaceChildren(data.viewer_url ? el("a", { href: data.viewer_url, id: "study-viewer",
          target: "_blank", rel: "noopener noreferrer", text: "Open the study in the viewer" }) : "");
        deliveries(data.deliveries, data.fhir);
        jobs(data.jobs);
      }
      NF.stamp();
    } catch (e) {
      document.getElementById("updated").textContent = e.message === "unauthorised" ? "" : "Update failed: " + e.message;
    }
  }

  NF.setOnSignedIn(refresh);
  refresh();
  setInterval(refresh, 5000);
})();
